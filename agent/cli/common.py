"""What every command module shares: the consoles, the option types, the error decorator and small helpers."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.errors import CraError, InvalidInput
from agent.llm.names import scrub_urls

if TYPE_CHECKING:
    from agent.config import Config
    from agent.llm.roles import Role

P = ParamSpec("P")
R = TypeVar("R")

out = Console()
err = Console(stderr=True)
HomeOpt = Annotated[Path | None, typer.Option("--home", help="cra state folder (default: $CRA_HOME or ~/.local/share/cra).")]
RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="The decomp checkout.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file to use instead of the project's cra.toml.")]
RoleOpt = Annotated[str, typer.Option("--role", help="reasoning or coding.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
StageOpt = Annotated[str, typer.Option("--stage", help="task_analysis, scope, precision, plan or code.")]


def _table(columns: tuple[str, ...], **options) -> Table:
    """A rich table with these column headers (`options` as for `rich.table.Table`)."""
    table = Table(**options)
    for column in columns:
        table.add_column(column)
    return table


def _emit_json(data: object) -> None:
    """Print `data` as indented JSON on stdout (dates and paths as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _write_json(path: Path, data: dict) -> None:
    """Write `data` atomically: to a temporary file beside `path`, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def _fail(exc: CraError) -> NoReturn:
    """Print `exc` as one line on stderr (URLs scrubbed) and exit with its exit code."""
    err.print(f"[bold red]error:[/] {escape(scrub_urls(str(exc)))}")
    raise typer.Exit(exc.exit_code)


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Make `command` end in `_fail` on a `CraError`: one line and the error's exit code, no traceback."""

    @functools.wraps(command)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CraError as exc:
            _fail(exc)

    return guarded


def _config(repo: Path | None, config: Path | None) -> Config:
    """The merged config for `repo`, or the `config` file instead of the project's cra.toml."""
    from agent.config import load_config

    return load_config(repo, path=config)


def _role(role: str) -> Role:
    """`role` if it names a role, else an `InvalidInput`."""
    from agent.llm.roles import ROLES

    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return role


def _prefect_defaults() -> None:
    """Quiet, patient Prefect defaults unless the user set their own, and a watcher that ends an ephemeral server with us."""
    import os

    from agent.extras import require
    from agent.lifeline import watch_children

    require("flows", "running as a Prefect flow")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL"):
        watch_children()
    _quiet_expected_errors()


def _quiet_expected_errors() -> None:
    """Keep Prefect's console from printing tracebacks of cra's typed errors, which cra prints as one line (the UI keeps them)."""
    import logging

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    def kinds(cls: type) -> set[str]:
        return {cls.__name__}.union(*(kinds(sub) for sub in cls.__subclasses__()))

    ours = re.compile(r"encountered an exception (?:%s):" % "|".join(sorted(kinds(CraError))))

    def expected(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None and not isinstance(error, CraError):
            error = error.__cause__ or error.__context__
        return error is None and not ours.search(record.getMessage())  # nor its "Finished in state Failed" line

    setup_logging()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, PrefectConsoleHandler)}:
        handler.addFilter(expected)
