"""Model and adapter names as they arrive from config, the registry or the command line: checked before use."""

from __future__ import annotations

import re

from agent.errors import UnsafeName

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9][A-Za-z0-9._:@+-]*)?$")


def check_name(name: str, *, what: str = "model name") -> str:
    """Return `name` if it is a plain model name (`org/model`, `model:tag`); refuse paths and traversal."""
    if not name or len(name) > 200 or not _NAME.match(name) or ".." in name:
        raise UnsafeName(
            f"{what} {name!r} is not allowed: use letters, digits and . _ - : @ +, with at most one '/' "
            "(as in Qwen/Qwen3-4B), and no '..' or absolute paths"
        )
    return name
