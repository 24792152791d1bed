"""History notes: what the commits that created, renamed or changed each symbol said, with the names it had before.

pret's history is documentation work: "Rename sub_8135C50 to CalcNewMinHandAngle" and "Document the wall clock" are
people describing exact symbols. Each commit's C diff is read once, when the index first sees the commit: a definition
line it added is a symbol *created*; a definition removed and one added in the same hunk with the same shape
(the line with the name taken out) is a *rename*; a hunk inside a definition (git's function context) *changed* it.
The rows live beside the commit tables, so they cover exactly the commits reachable from the indexed HEAD.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from agent.index.history import HistoryUpdate, strip_pr_suffix
from agent.repo import GIT_ENV

CODE_PATHS = ("*.c", "*.h")
MAX_CHANGES = 5   # the newest commits that changed a symbol, kept in its note
MAX_RENAMES = 5   # the names a symbol had before, newest first
MAX_NOTE = 600    # characters of a note in the search text
_COMMIT = "\x1ecra-commit "
_KEPT = r"^(@@ |\+\+\+ |diff --git |.cra-commit |[-+][A-Za-z_])"
# A definition at the start of a line: a function (no `;`: not a prototype or a call) or initialised data.
_FUNCTION = re.compile(r"^[A-Za-z_][\w \t*]*?\b([A-Za-z_]\w*)\s*\(([^;{}]*)\)\s*(?:\{\s*)?$")
_DATA = re.compile(r"^[A-Za-z_][\w \t*]*?\b([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)\s*=")
_CONTEXT = re.compile(r"^[^(\[=;]*?\b([A-Za-z_]\w*)\s*[(\[=]")
_KEYWORDS = frozenset("if for while switch return sizeof case else do goto".split())

_CHANGES = pa.schema([("sha", pa.string()), ("path", pa.string()), ("name", pa.string()), ("event", pa.string()),
                      ("old_name", pa.string())])


@dataclass(frozen=True, slots=True)
class SymbolChange:
    """One commit's change to one symbol: created, renamed (from `old_name`) or changed."""

    sha: str
    path: str
    name: str
    event: str
    old_name: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a symbol's history: the event, the commit's subject, and the name before a rename."""

    event: str
    subject: str
    sha: str
    old_name: str | None = None


@dataclass
class Note:
    """What the history says about one symbol: its entries, oldest first, and the names it had before."""

    entries: list[Entry] = field(default_factory=list)

    @property
    def old_names(self) -> list[str]:
        """Earlier names, newest first."""
        return list(dict.fromkeys(e.old_name for e in reversed(self.entries) if e.old_name))[:MAX_RENAMES]

    def as_dict(self) -> dict:
        """A JSON-ready view: the entries, oldest first, and the names it had before."""
        return {"old_names": self.old_names, "entries": [{"event": e.event, "subject": e.subject, "sha": e.sha,
                                                          "old_name": e.old_name} for e in self.entries]}

    def origin(self) -> str:
        """Where the symbol was created and the names it had: what seldom changes."""
        parts = []
        created = [e for e in self.entries if e.event == "created"]
        if created:
            parts.append(f'created in "{created[0].subject}"')
        renames = [e for e in reversed(self.entries) if e.event == "renamed"][:MAX_RENAMES]
        parts.extend(f'was {e.old_name} until "{e.subject}"' for e in renames)
        return "; ".join(parts)[:MAX_NOTE]

    def changes(self) -> str:
        """The newest commits that changed it: what every such commit changes again."""
        changed = list(dict.fromkeys(e.subject for e in reversed(self.entries) if e.event == "changed"))[:MAX_CHANGES]
        return ("changed in " + ", ".join(f'"{s}"' for s in changed))[:MAX_NOTE] if changed else ""

    def text(self) -> str:
        """The note in one line: where the symbol was created, its old names, the newest changes."""
        return "; ".join(part for part in (self.origin(), self.changes()) if part)


def _definition(line: str) -> tuple[str, str] | None:
    """The name a definition line defines and its shape (the line without the name), or None."""
    m = _FUNCTION.match(line) or _DATA.match(line)
    if m is None or m.group(1) in _KEYWORDS:
        return None
    shape = line[:m.start(1)] + "@" + line[m.end(1):]
    return m.group(1), " ".join(shape.replace("{", "").split())


def _context_name(header: str) -> str | None:
    """The symbol a hunk sits in, from git's function context after `@@ ... @@`."""
    m = _CONTEXT.match(header)
    return m.group(1) if m and m.group(1) not in _KEYWORDS else None


def _hunk_changes(sha: str, path: str, context: str | None, removed: list[tuple[str, str]],
                  added: list[tuple[str, str]], sweeping: bool) -> Iterator[SymbolChange]:
    """The changes one hunk makes: renames (a removed and an added definition of one shape), creations, the context."""
    gone = {name for name, _ in removed}
    by_shape: dict[str, list[str]] = defaultdict(list)
    for name, shape in removed:
        by_shape[shape].append(name)
    named = set()
    for name, shape in added:
        olds = [o for o in by_shape.get(shape, []) if o != name]
        if name in gone:
            continue
        if len(olds) == 1 and len(by_shape[shape]) == 1:
            yield SymbolChange(sha, path, name, "renamed", olds[0])
        else:
            yield SymbolChange(sha, path, name, "created")
        named.add(name)
    if context and not sweeping and context not in named:
        yield SymbolChange(sha, path, context, "changed")


def _parse(lines: Iterable[str], sweeping: set[str], started: list[str]) -> Iterator[SymbolChange]:
    """SymbolChanges of `git log -U0` output (commits start with _COMMIT); each commit's sha goes to `started`."""
    sha = path = ""
    context: str | None = None
    removed: list[tuple[str, str]] = []
    added: list[tuple[str, str]] = []

    def flush() -> Iterator[SymbolChange]:
        if sha and path and (removed or added or context):
            yield from _hunk_changes(sha, path, context, removed, added, sha in sweeping)

    for line in lines:
        first = line[:1]
        if first == "+" or first == "-":
            if line.startswith(("+++ ", "--- ")):
                if line.startswith("+++ "):
                    path = line[6:] if line.startswith("+++ b/") else ""
                continue
            found = (line[1:2].isalpha() or line[1:2] == "_") and _definition(line[1:])
            if found:
                (added if first == "+" else removed).append(found)
        elif line.startswith("@@ "):
            yield from flush()
            removed, added = [], []
            _, _, header = line[3:].partition(" @@")
            context = _context_name(header.strip())
        elif line.startswith(_COMMIT):
            yield from flush()
            sha, path, context, removed, added = line[len(_COMMIT):].strip(), "", None, [], []
            started.append(sha)
        elif line.startswith("diff --git "):
            yield from flush()
            path, context, removed, added = "", None, [], []
    yield from flush()


def read_changes(repo: Path, shas: list[str], sweeping: set[str]) -> tuple[list[SymbolChange], list[str]]:
    """The symbol changes of `shas` (the C diffs of non-merge commits), and the shas git could not diff.

    Commits in `sweeping` touch too many files to say what one symbol is for: only their creations and renames count.
    """
    changes: list[SymbolChange] = []
    unreadable: list[str] = []
    todo = list(shas)
    while todo:
        args = ["git", "-C", str(repo), "-c", "core.quotePath=false", "log", "--no-walk=unsorted", "--stdin",
                "--no-merges", "--no-renames", "-U0", "--no-color", "--no-ext-diff", f"--format={_COMMIT}%H", "--",
                *CODE_PATHS]
        with tempfile.TemporaryFile() as feed:
            feed.write(("\n".join(todo) + "\n").encode())
            feed.seek(0)
            git = subprocess.Popen(args, stdin=feed, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   env={**os.environ, **GIT_ENV})
            # grep keeps the lines the parser reads (a fifth of them on pokeemerald): Python reads fewer.
            keep = subprocess.Popen(["grep", "-a", "-E", _KEPT], stdin=git.stdout, stdout=subprocess.PIPE,
                                    env={**os.environ, "LC_ALL": "C"})
            git.stdout.close()
            started: list[str] = []
            batch = list(_parse(keep.stdout.read().decode("utf-8", "replace").split("\n"), sweeping, started))
            keep.stdout.close()
            failed = git.wait() != 0 or keep.wait() > 1
        if not failed:
            changes.extend(batch)
            return list(dict.fromkeys(changes)), unreadable
        # git died inside the diff of the last commit it named (or before the first): that commit is unreadable.
        bad = started[-1] if started else todo[0]
        changes.extend(c for c in batch if c.sha != bad)
        unreadable.append(bad)
        todo = todo[todo.index(bad) + 1:]
    return list(dict.fromkeys(changes)), unreadable


def update_changes(con: duckdb.DuckDBPyConnection, repo: Path, update: HistoryUpdate) -> list[str]:
    """Bring the symbol changes in line with a history update (inside its transaction); the shas not diffable."""
    changes, unreadable = read_changes(repo, update.added, update.sweeping)
    _store_changes(con, changes, update.removed)
    return unreadable


def _store_changes(con: duckdb.DuckDBPyConnection, changes: list[SymbolChange], gone: list[str]) -> None:
    """Add `changes` and drop the rows of commits no longer reachable."""
    if gone:
        con.register("_gone", pa.table({"sha": pa.array(gone, pa.string())}))
        con.execute("DELETE FROM symbol_changes WHERE sha IN (SELECT sha FROM _gone)")
        con.unregister("_gone")
    if changes:
        rows = pa.Table.from_pylist([{"sha": c.sha, "path": c.path, "name": c.name, "event": c.event,
                                      "old_name": c.old_name} for c in changes], schema=_CHANGES)
        con.register("_rows", rows)
        con.execute("INSERT INTO symbol_changes BY NAME SELECT * FROM _rows")
        con.unregister("_rows")


def notes_for(con: duckdb.DuckDBPyConnection, symbols: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Note]:
    """The history note of each (name, path) of `symbols` that has one, following renames back through its names.

    A name changed in several files (a static helper many files define) keeps only the changes in its own file.
    """
    symbols = set(symbols)
    by_name: dict[str, list[tuple[int, str, Entry]]] = defaultdict(list)
    todo = {name for name, _ in symbols}
    for _ in range(MAX_RENAMES + 1):  # each pass reads the rows of the names the last pass's renames replaced
        if not todo:
            break
        con.register("_names", pa.table({"name": pa.array(sorted(todo), pa.string())}))
        try:
            rows = con.execute(
                "SELECT s.name, s.path, s.event, s.old_name, c.seq, c.subject, s.sha FROM symbol_changes s"
                " JOIN commits c USING (sha) WHERE s.name IN (SELECT name FROM _names) ORDER BY c.seq, s.event"
            ).fetchall()
        finally:
            con.unregister("_names")
        for name, path, event, old_name, seq, subject, sha in rows:
            by_name[name].append((seq, path, Entry(event, strip_pr_suffix(subject), sha, old_name)))
        todo = {row[3] for row in rows if row[3]} - by_name.keys() - todo
    notes = {}
    for name, path in symbols:
        if name in by_name:
            entries = _entries(by_name, name, path, None, depth=0)
            if entries:
                notes[(name, path)] = Note([e for _, e in sorted(entries, key=lambda x: x[0])])
    return notes


def _entries(by_name: dict[str, list[tuple[int, str, Entry]]], name: str, path: str, before: int | None,
             depth: int) -> list[tuple[int, Entry]]:
    """`name`'s entries older than `before`, and those of the names a rename replaced (oldest name first)."""
    rows = [(seq, where, e) for seq, where, e in by_name.get(name, []) if before is None or seq < before]
    if len({where for _, where, _ in rows}) > 1:
        rows = [row for row in rows if row[1] == path]
    own = [(seq, e) for seq, _, e in rows]
    if depth >= MAX_RENAMES:
        return own
    out = list(own)
    for seq, e in own:
        if e.event == "renamed" and e.old_name and e.old_name != name:
            out.extend(_entries(by_name, e.old_name, path, seq, depth + 1))
    return out
