"""How a job's steps run: directly in this process, or each as a Prefect task (`flows/steps.py`).

A bootstrapping pass and a curate-and-retrain cycle are each one library function that takes its `Steps`: the CLI
runs them directly, the flows as Prefect tasks, so the two cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Steps:
    """Runs each step in this process; `each` runs up to `concurrency` of its steps at a time, in threads."""

    def one(self, name: str, step: Callable[..., T], *args: Any) -> T:
        """Run `step(*args)`, the step called `name`."""
        return step(*args)

    def each(self, name: str, step: Callable[..., T], argsets: Sequence[tuple], concurrency: int = 1) -> list[T]:
        """Run `step` once per argument tuple; the results in order."""
        if concurrency <= 1 or len(argsets) <= 1:
            return [step(*args) for args in argsets]
        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(lambda args: step(*args), argsets))


DIRECT = Steps()
