"""Model and adapter names as they arrive from config, the registry or the command line: checked before use."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from agent.errors import UnsafeName

_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]*(/[A-Za-z0-9][A-Za-z0-9._:@+-]*)?$")


def check_name(name: str, *, what: str = "model name") -> str:
    """Return `name` if it is a plain model name (`org/model`, `model:tag`); refuse paths and traversal."""
    if not name or len(name) > 200 or not _NAME.match(name) or ".." in name:
        raise UnsafeName(
            f"{what} {name!r} is not allowed: use letters, digits and . _ - : @ +, with at most one '/' "
            "(as in Qwen/Qwen3-4B), and no '..' or absolute paths"
        )
    return name


def scrub_urls(text: str) -> str:
    """`text` with the credentials of every URL in it (`scheme://user:password@host`) replaced by `***`."""
    return _URL_CREDENTIALS.sub(r"\1***@", text)


def check_endpoint(url: str) -> str:
    """Return `url` if it is an http(s) URL with a host; else a clear error that never repeats its credentials."""
    try:
        parts = urlsplit(url)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname) and (parts.port or 0) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{scrub_urls(url)!r} is not an http(s) URL; give the server's OpenAI-compatible base, "
                         "e.g. http://127.0.0.1:8000/v1")
    return url
