"""Read-only questions the agent's stages ask the index (through `agent.project.Project`): symbols of files, names
that exist, file lists. Each takes the project's store."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent import store

AGENT_KINDS = ("function", "global", "macro_function", "macro", "struct", "union", "enum", "typedef")


@dataclass(frozen=True)
class IndexedSymbol:
    """A symbol as the stages see it."""

    name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str
    pagerank: float


def _in(values: Iterable[str]) -> tuple[str, list[str]]:
    values = list(values)
    return ", ".join("?" * len(values)) or "NULL", values


def symbols_in_files(db: Path, paths: Iterable[str], kinds: Iterable[str] = AGENT_KINDS) -> list[IndexedSymbol]:
    """Symbols defined in `paths`, most central (PageRank) first."""
    marks, files = _in(paths)
    kind_marks, kind_list = _in(kinds)
    with store.opened(db, read_only=True) as con:
        rows = con.execute(
            f"SELECT s.name, s.kind, s.path, s.start_line, s.end_line, coalesce(s.signature, ''), coalesce(m.pagerank, 0)"
            f" FROM symbols s LEFT JOIN symbol_metrics m ON m.id = s.id"
            f" WHERE s.path IN ({marks}) AND s.kind IN ({kind_marks}) ORDER BY 7 DESC, s.path, s.start_line",
            [*files, *kind_list],
        ).fetchall()
    return [IndexedSymbol(*row) for row in rows]


def defined(db: Path, names: Iterable[str]) -> dict[str, list[str]]:
    """For each name that the index defines (not only declares), the files defining it."""
    marks, values = _in(names)
    with store.opened(db, read_only=True) as con:
        rows = con.execute(
            f"SELECT name, list(DISTINCT path ORDER BY path) FROM symbols WHERE name IN ({marks}) AND kind <> 'prototype'"
            " GROUP BY name", values,
        ).fetchall()
    return dict(rows)


def indexed_files(db: Path) -> set[str]:
    """Every file path in the index."""
    with store.opened(db, read_only=True) as con:
        return {row[0] for row in con.execute("SELECT path FROM files").fetchall()}
