"""Steps as Prefect tasks: each step of a library job is a task run named after it, on the flow's task runner."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from prefect import task
from prefect.cache_policies import NO_CACHE

from agent.steps import Steps

T = TypeVar("T")


class PrefectSteps(Steps):
    """Each step a Prefect task (`options` per step name: caching, retries); `each` submits them all at once."""

    def __init__(self, options: dict[str, dict[str, Any]] | None = None) -> None:
        self.options = options or {}

    def _task(self, name: str, step: Callable[..., T], run_name: str):
        return task(step, name=name, task_run_name=run_name, **(self.options.get(name) or {"cache_policy": NO_CACHE}))

    def one(self, name: str, step: Callable[..., T], *args: Any) -> T:
        """Run `step(*args)` as the task `name`."""
        return self._task(name, step, name)(*args)

    def each(self, name: str, step: Callable[..., T], argsets: Sequence[tuple], concurrency: int = 1) -> list[T]:
        """Submit one task run per argument tuple (`name-0`, `name-1`, ...) and wait for them all; the task runner
        decides how many run at once."""
        futures = [self._task(name, step, f"{name}-{i}").submit(*args) for i, args in enumerate(argsets)]
        return [future.result() for future in futures]
