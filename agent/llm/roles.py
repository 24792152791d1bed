"""The agent's stages and the model role each one talks to."""

from __future__ import annotations

from typing import Literal

Role = Literal["reasoning", "coding"]
ROLES: tuple[Role, ...] = ("reasoning", "coding")

STAGE_ROLES: dict[str, Role] = {
    "task_analysis": "reasoning",
    "scope": "reasoning",
    "precision": "reasoning",
    "plan": "reasoning",
    "code": "coding",
}


def stages_of(role: Role) -> list[str]:
    """The stages served by `role`, in pipeline order."""
    return [stage for stage, r in STAGE_ROLES.items() if r == role]
