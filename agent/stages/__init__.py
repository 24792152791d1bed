"""The five stages, in pipeline order; each is one module implementing `agent.stages.base.Stage`.

`PIPELINE` is the only list of stages: the model role of each, the training recipes, held-out scoring, bootstrapped
pairs and the Prefect artifacts all come from it.
"""

from __future__ import annotations

from agent.errors import InvalidInput
from agent.llm.roles import Role
from agent.stages.base import Stage, StageRecipe
from agent.stages.code import CodeStage
from agent.stages.plan import PlanStage
from agent.stages.precision import PrecisionStage
from agent.stages.scope import ScopeStage
from agent.stages.task_analysis import TaskAnalysisStage

PIPELINE: tuple[Stage, ...] = (TaskAnalysisStage(), ScopeStage(), PrecisionStage(), PlanStage(), CodeStage())
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
RETRIEVAL_STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE if stage.has_rules)
STAGE_ROLES: dict[str, Role] = {stage.name: stage.role for stage in PIPELINE}  # what the model layer routes by
RECIPES: dict[str, StageRecipe] = {stage.name: stage.recipe for stage in PIPELINE}


def stage_named(name: str) -> Stage:
    """The stage called `name`; any other name is an error that lists the stages."""
    for stage in PIPELINE:
        if stage.name == name:
            return stage
    raise InvalidInput(f"unknown stage {name!r}; stages are {', '.join(STAGE_NAMES)}")


def stages_of(role: Role) -> list[str]:
    """The stages answered by `role`, in pipeline order."""
    return [stage.name for stage in PIPELINE if stage.role == role]
