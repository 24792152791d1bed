"""The five stages, in pipeline order; each is one module implementing `agent.stages.base.Stage`."""

from __future__ import annotations

from agent.stages.base import Stage
from agent.stages.code import CodeStage
from agent.stages.plan import PlanStage
from agent.stages.precision import PrecisionStage
from agent.stages.scope import ScopeStage
from agent.stages.task_analysis import TaskAnalysisStage

PIPELINE: tuple[Stage, ...] = (TaskAnalysisStage(), ScopeStage(), PrecisionStage(), PlanStage(), CodeStage())
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE)
RETRIEVAL_STAGES: tuple[str, ...] = tuple(stage.name for stage in PIPELINE if stage.has_rules)
