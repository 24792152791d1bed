"""The model roles: each is one server with one base model; the stages say which role answers them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Role = Literal["reasoning", "coding"]
ROLES: tuple[Role, ...] = ("reasoning", "coding")
Routing = Mapping[str, Role]  # stage name -> the role that answers it (agent.stages.STAGE_ROLES)
