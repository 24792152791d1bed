"""What every command module shares: the consoles, the option types, the error decorator and small helpers."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NoReturn, ParamSpec, TypeVar

import typer
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.errors import CraError, InvalidInput
from agent.llm.names import scrub_urls

if TYPE_CHECKING:
    from agent.config import Config
    from agent.llm.roles import Role

P = ParamSpec("P")
R = TypeVar("R")


class _Console(Console):
    """A rich console that wraps lines to the terminal, and not at all where its stream is not a terminal."""

    @property
    def soft_wrap(self) -> bool:
        """Whether `print` leaves long lines whole: always in a pipe or file, where no width is real."""
        return self._soft_wrap or not self.is_terminal

    @soft_wrap.setter
    def soft_wrap(self, value: bool) -> None:
        self._soft_wrap = value


out = _Console()
err = _Console(stderr=True)
HomeOpt = Annotated[Path | None, typer.Option("--home", help="cra state folder (default: $CRA_HOME or ~/.local/share/cra).")]
RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="The decomp checkout.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file to use instead of the project's cra.toml.")]
RoleOpt = Annotated[str, typer.Option("--role", help="reasoning or coding.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]
StageOpt = Annotated[str, typer.Option("--stage", help="task_analysis, scope, precision, plan or code.")]
WideOpt = Annotated[bool, typer.Option("--wide", help="Show every column, however narrow the terminal (secondary "
                                                      "columns are hidden where they do not fit).")]

NARROWEST = 20  # a column that is not an identifier is kept at least this wide (or its widest value) in a terminal

ColumnKind = Literal["id", "text", "extra", "below"]
# How a column gives way in a narrow terminal (in a pipe every column is printed whole, tab-separated): an "id" (run
# id, name, path, path:line) is shown whole, folded only where the terminal cannot hold it; "text" wraps at words;
# an "extra" (a score, a reason, a timestamp) is shown only where it fits beside the other columns and the extras
# to its left, unless --wide; a "below" column is printed under the row's first identifier.


@dataclass(frozen=True)
class Col:
    """A table column: its header, its kind, and how long its values may be in a terminal."""

    header: str
    kind: ColumnKind = "text"
    clip: int | None = None  # in a terminal, longer values are shortened to this many characters, unless --wide


def ident(header: str) -> Col:
    """An identifier column: never cut."""
    return Col(header, "id")


def extra(header: str) -> Col:
    """A secondary column: the first to be hidden in a narrow terminal."""
    return Col(header, "extra")


def below(header: str) -> Col:
    """A column printed under the row's first identifier in a terminal, as its own column in a pipe."""
    return Col(header, "below")


class Listing:
    """A table's rows, printed by `_show`: fitted to the terminal, or tab-separated when stdout is not one."""

    def __init__(self, columns: tuple[str | Col, ...], *, title: str | None = None, wide: bool = False,
                 title_in_pipe: bool = False, show_header: bool = True, title_justify: str = "center") -> None:
        self.columns = [c if isinstance(c, Col) else Col(c) for c in columns]
        self.title, self.wide, self.title_in_pipe = title, wide, title_in_pipe
        self.show_header, self.title_justify = show_header, title_justify
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str) -> None:
        """Add a row of rich-markup cells, one per column (missing ones are empty)."""
        self.rows.append([Text.from_markup(cell) for cell in cells] + [Text()] * (len(self.columns) - len(cells)))

    def tsv(self) -> str:
        """The rows as tab-separated lines, every column whole, the header first (and `# title` if asked)."""
        lines = [f"# {Text.from_markup(self.title).plain}"] if self.title and self.title_in_pipe else []
        if self.show_header:
            lines.append("\t".join(c.header for c in self.columns))
        lines += ["\t".join(_field(cell) for cell in row) for row in self.rows]
        return "".join(line + "\n" for line in lines)

    def table(self, width: int) -> Table:
        """A rich table at most `width` characters wide: identifiers whole, extras only where they fit."""
        columns = [c for c in self.columns if c.kind != "below"]
        rows = [self._terminal_cells(row) for row in self.rows]
        headers = [Text(c.header) if self.show_header else Text() for c in columns]
        need, full, word = zip(*(_measure([cells[k] for cells in (headers, *rows)]) for k in range(len(columns))))
        ids = [c.kind == "id" for c in columns]
        floor = [n if is_id else min(f, NARROWEST) for n, f, is_id in zip(need, full, ids)]
        keep = [k for k, c in enumerate(columns) if self.wide or c.kind != "extra"]
        for k in [k for k, c in enumerate(columns) if c.kind == "extra" and not self.wide]:
            if sum(floor[j] for j in keep) + floor[k] + _frame(len(keep) + 1) <= width:
                keep = sorted([*keep, k])
        lows = [[floor[k] for k in keep], [need[k] if ids[k] else word[k] for k in keep],  # wrapped at words, then
                [need[k] if ids[k] else min(full[k], 3) for k in keep], [1] * len(keep)]  # words folded, then all
        widths = _fit([full[k] for k in keep], lows, width - _frame(len(keep)))
        hidden = [c.header for k, c in enumerate(columns) if k not in keep]
        caption = escape(f"hidden at this width: {', '.join(hidden)} (--wide shows them)") if hidden else None
        table = Table(title=self.title, caption=caption, caption_justify="left", show_header=self.show_header,
                      title_justify=self.title_justify)
        for k, w in zip(keep, widths):
            table.add_column(columns[k].header, width=w, overflow="fold")
        for cells in rows:
            table.add_row(*(cells[k] for k in keep))
        return table

    def _terminal_cells(self, row: list[Text]) -> list[Text]:
        """`row` for a terminal: values clipped unless wide, the "below" columns under its first identifier."""
        shown = [c for c in self.columns if c.kind != "below"]
        cells = [value.copy() for c, value in zip(self.columns, row) if c.kind != "below"]
        for column, cell in zip(shown, cells):
            if column.clip and not self.wide and len(cell) > column.clip:
                cell.truncate(column.clip, overflow="ellipsis")
        anchor = next((k for k, c in enumerate(shown) if c.kind == "id"), 0)
        for column, value in zip(self.columns, row):
            if column.kind == "below" and value:
                note = value.copy()
                note.stylize("dim")
                cells[anchor].append("\n").append_text(note)
        return cells


def _field(cell: Text) -> str:
    """A cell as one tab-separated field: its lines joined by "; ", tabs made spaces."""
    return "; ".join(line for line in cell.plain.replace("\t", " ").split("\n") if line)


def _measure(cells: list[Text]) -> tuple[int, int, int]:
    """The widths of the widest first line of `cells` (an identifier's value), line and word; at least 1."""
    lines = [[cell_len(line) for line in cell.plain.split("\n")] for cell in cells]
    words = [cell_len(word) for cell in cells for word in cell.plain.split()]
    return max([1, *(widths[0] for widths in lines)]), max([1, *map(max, lines)]), max([1, *words])


def _frame(columns: int) -> int:
    """Characters a default rich table spends on borders and padding around `columns` columns."""
    return 3 * columns + 1


def _fit(widths: list[int], lows: list[list[int]], space: int) -> list[int]:
    """Shrink `widths` to `space`: the widest column above its low width gives way first, for each list of lows in turn."""
    widths = list(widths)
    for low in lows:
        while sum(widths) > space:
            shrinkable = [k for k, w in enumerate(widths) if w > low[k]]
            if not shrinkable:
                break
            widths[max(shrinkable, key=widths.__getitem__)] -= 1
    return widths


def _show(listing: Listing) -> None:
    """Print `listing`: a table fitted to the terminal's width, or tab-separated lines when stdout is not a terminal."""
    if out.is_terminal:
        out.print(listing.table(out.width))
    else:
        out.file.write(listing.tsv())


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
