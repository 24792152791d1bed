"""The adapter registry: every adapter in the cra home's adapter store, with its stage, base, the project or family
it was trained for, and where it is active.

An adapter is promoted into a scope (a project, a family of projects, or the whole home), replacing the one active
there for its stage and base; an adapter active nowhere that was once promoted is retired, one never promoted a
candidate. Promotions are kept, so a rollback brings back the one before.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from agent.config import adapter_store
from agent.errors import BadAdapter, InvalidInput, UnknownAdapter, UnsafeName
from agent.llm.adapters import describe_base, read_adapter, same_name
from agent.llm.names import check_name
from agent.projects import HOME_SCOPE, checked_name, family_scope, project_scope
from agent.store import transaction, utc_now
from agent.store.ledger import LEDGER, ledger

STATUSES = ("candidate", "active", "retired")
METADATA_FILE = "cra_adapter.json"  # what cra's training says of an adapter it trained
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", METADATA_FILE, "README.md")  # all the store keeps
MAX_ADAPTER_BYTES = 8 << 30
_SELECT = ("SELECT a.name, a.stage, a.base_model, a.base_fingerprint, a.path, a.rank, a.created_at, a.metadata,"
           " a.project, a.project_family, list(p.scope ORDER BY p.scope) FILTER (WHERE p.adapter IS NOT NULL"
           " AND p.retired_at IS NULL),"
           " max(p.promoted_at) FROM adapters a LEFT JOIN promotions p ON p.adapter = a.name")


@LEDGER.migration
def l002_adapters(con: duckdb.DuckDBPyConnection) -> None:
    """The adapter registry: every adapter with its stage, base, status and metrics."""
    con.execute(
        """
        CREATE TABLE adapters (
            name TEXT PRIMARY KEY,
            stage TEXT NOT NULL,
            base_model TEXT NOT NULL,        -- the base it was trained on, as configured
            base_fingerprint TEXT,           -- hash of the base's architecture config
            path TEXT NOT NULL,              -- inside the cra home's adapter store
            rank INTEGER NOT NULL,
            status TEXT NOT NULL,            -- candidate | active | retired
            created_at TIMESTAMP NOT NULL,
            promoted_at TIMESTAMP,
            metadata JSON
        )
        """
    )


@LEDGER.migration
def l011_adapter_scopes(con: duckdb.DuckDBPyConnection) -> None:
    """The project or family each adapter was trained for, and promotions per scope (earlier ones: the home's)."""
    con.execute("ALTER TABLE adapters ADD COLUMN project TEXT")  # trained on this project's examples only
    con.execute("ALTER TABLE adapters ADD COLUMN project_family TEXT")  # trained on this family's projects' examples
    con.execute(
        """
        CREATE TABLE promotions (
            adapter TEXT NOT NULL,
            stage TEXT NOT NULL,
            base_model TEXT NOT NULL,
            scope TEXT NOT NULL,             -- home | project:<name> | family:<name>
            promoted_at TIMESTAMP NOT NULL,
            retired_at TIMESTAMP             -- when another took its place; NULL while active
        )
        """
    )
    con.execute("INSERT INTO promotions SELECT name, stage, base_model, 'home', coalesce(promoted_at, created_at),"
                " CASE WHEN status = 'active' THEN NULL ELSE promoted_at END FROM adapters"
                " WHERE status = 'active' OR promoted_at IS NOT NULL")
    con.execute("ALTER TABLE adapters DROP COLUMN status")
    con.execute("ALTER TABLE adapters DROP COLUMN promoted_at")


@dataclass(frozen=True)
class Adapter:
    """One registered adapter."""

    name: str
    stage: str
    base_model: str
    base_fingerprint: str | None
    path: Path
    rank: int
    created_at: datetime
    metadata: dict = field(default_factory=dict)
    project: str | None = None  # trained for this project
    project_family: str | None = None  # trained for this family of projects
    active_in: tuple[str, ...] = ()  # the scopes it is active in
    promoted_at: datetime | None = None  # its latest promotion

    @property
    def status(self) -> str:
        """active (somewhere), retired (promoted once, active nowhere now) or candidate."""
        return "active" if self.active_in else "retired" if self.promoted_at else "candidate"

    @property
    def trained_for(self) -> str:
        """The scope it was trained for: its project, its family, or the home."""
        if self.project:
            return project_scope(self.project)
        return family_scope(self.project_family) if self.project_family else HOME_SCOPE


def _adapter(row: tuple) -> Adapter:
    name, stage, base, fingerprint, path, rank, created, metadata, project, family, active, promoted = row
    return Adapter(name, stage, base, fingerprint, Path(path), rank, created, json.loads(metadata) if metadata else {},
                   project, family, tuple(active or ()), promoted)


def stored_path(home: str | Path | None, adapter: Adapter) -> Path:
    """The adapter's folder, refused if the registry points outside the adapter store."""
    store = adapter_store(home).resolve()
    path = adapter.path.resolve()
    if not path.is_relative_to(store):
        raise UnsafeName(f"adapter {adapter.name} points at {path}, outside the adapter store {store}; register it again")
    return path


def register(
    home: str | Path | None, source: Path, *, name: str, stage: str, base_model: str | None,
    metadata: dict | None = None, project: str | None = None, project_family: str | None = None,
) -> Adapter:
    """Copy the adapter at `source` into the adapter store and record it as a candidate for `stage`, trained for
    `project`, `project_family` or (neither) the whole home.

    `base_model` is the base it is registered for; None takes the base the adapter's own config names, and an
    adapter naming another base than `base_model` is refused.
    """
    check_name(name, what="adapter name")
    if project and project_family:
        raise InvalidInput("an adapter is trained for one project or one family of projects, not both")
    for scope_name in (project, project_family):
        if scope_name:
            checked_name(scope_name)
    if "/" in name:
        raise UnsafeName(f"adapter name {name!r} has a '/'; an adapter name is one word (as in scope-r3)")
    _refuse_links(source)
    files = read_adapter(source)
    if base_model is None:
        if not files.base_model:
            raise BadAdapter(f"{source} does not say which base it was trained on (no base_model_name_or_path in its "
                             "adapter_config.json); name the base with --base")
        base_model = files.base_model
    elif files.base_model and not same_name(files.base_model, base_model):
        raise BadAdapter(f"{source} was trained on {files.base_model}, not on {base_model}; register it with --base "
                         f"{files.base_model} if that is right (it is then served only where that base is)")
    base = describe_base(base_model)
    store = adapter_store(home)
    target = store / name
    with ledger(home) as con:
        if con.execute("SELECT 1 FROM adapters WHERE name = ?", [name]).fetchone() or target.exists():
            raise InvalidInput(f"an adapter named {name} is already registered; choose another name")
        store.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=store))
        try:
            for file in ADAPTER_FILES:
                if (source / file).is_file():
                    shutil.copyfile(source / file, staging / file)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            con.execute(
                "INSERT INTO adapters (name, stage, base_model, base_fingerprint, path, rank, created_at, metadata,"
                " project, project_family) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [name, stage, base_model, base.fingerprint, str(target), files.rank, utc_now(),
                 json.dumps(metadata or {}), project, project_family],
            )
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return get(home, name)


def _refuse_links(source: Path) -> None:
    """Refuse an adapter folder holding links, or files larger than an adapter can be."""
    if not source.is_dir():
        raise BadAdapter(f"adapter folder {source} does not exist")
    for entry in source.iterdir():
        if entry.is_symlink():
            raise BadAdapter(f"{entry} is a symbolic link; cra copies only an adapter's own files, so put the file "
                             "itself in the folder")
    size = sum((source / f).stat().st_size for f in ADAPTER_FILES if (source / f).is_file())
    if size > MAX_ADAPTER_BYTES:
        raise BadAdapter(f"{source}'s files take {size / 2**30:.1f} GiB, more than a LoRA adapter's "
                         f"{MAX_ADAPTER_BYTES / 2**30:.0f} GiB; is this a merged model?")


def get(home: str | Path | None, name: str) -> Adapter:
    """The adapter called `name`."""
    with ledger(home) as con:
        row = con.execute(f"{_SELECT} WHERE a.name = ? GROUP BY ALL", [name]).fetchone()
    if row is None:
        raise UnknownAdapter(f"no adapter named {name} in the registry; `cra adapters list` shows them")
    return _adapter(row)


def list_adapters(home: str | Path | None, *, stage: str | None = None, status: str | None = None) -> list[Adapter]:
    """Registered adapters, newest first, optionally of one stage or status."""
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"unknown status {status!r}; statuses are {', '.join(STATUSES)}")
    with ledger(home) as con:
        rows = con.execute(f"{_SELECT} WHERE (? IS NULL OR a.stage = ?) GROUP BY ALL ORDER BY a.created_at DESC, a.name",
                           [stage, stage]).fetchall()
    return [a for a in map(_adapter, rows) if status is None or a.status == status]


def active_adapters(home: str | Path | None) -> list[Adapter]:
    """Every adapter active somewhere (at most one per scope, stage and base)."""
    return list_adapters(home, status="active")


def record_evaluation(home: str | Path | None, name: str, evaluation: dict) -> Adapter:
    """Keep an adapter's held-out evaluation in its metadata."""
    adapter = get(home, name)
    with ledger(home) as con:
        con.execute("UPDATE adapters SET metadata = ? WHERE name = ?",
                    [json.dumps({**adapter.metadata, "evaluation": evaluation}), name])
    return get(home, name)


def promote(home: str | Path | None, name: str, *, scope: str | None = None,
            require_evaluation: bool = False) -> Adapter:
    """Make `name` the active adapter of its stage on its base in `scope` (default: the scope it was trained for);
    the one it replaces there is retired from it."""
    adapter = get(home, name)
    stored_path(home, adapter)
    scope = scope or adapter.trained_for
    if adapter.project and scope != adapter.trained_for:
        raise InvalidInput(f"adapter {name} was trained on project {adapter.project}'s examples only; it serves "
                           f"{adapter.trained_for}, not {scope}")
    if require_evaluation and "evaluation" not in adapter.metadata:
        raise InvalidInput(f"adapter {name} has no evaluation; run `cra gate {name}` first (or promote with --force)")
    if scope in adapter.active_in:
        return adapter
    now = utc_now()
    with ledger(home) as con, transaction(con):
        con.execute("UPDATE promotions SET retired_at = ? WHERE scope = ? AND stage = ? AND base_model = ?"
                    " AND retired_at IS NULL", [now, scope, adapter.stage, adapter.base_model])
        con.execute("INSERT INTO promotions VALUES (?, ?, ?, ?, ?, NULL)",
                    [name, adapter.stage, adapter.base_model, scope, now])
    return get(home, name)


def require_files(home: str | Path | None, adapter: Adapter) -> Path:
    """The adapter's folder, checked to be inside the store and to hold a LoRA adapter."""
    path = stored_path(home, adapter)
    try:
        read_adapter(path)
    except BadAdapter as exc:
        raise BadAdapter(f"registered adapter {adapter.name}: {exc}") from exc
    return path


def rollback(home: str | Path | None, stage: str, base_model: str, scope: str = HOME_SCOPE) -> Adapter:
    """Retire the active adapter of `stage` on `base_model` in `scope` and bring back the one it replaced there."""
    now = utc_now()
    with ledger(home) as con, transaction(con):
        where = "scope = ? AND stage = ? AND base_model = ?"
        current = con.execute(f"SELECT adapter FROM promotions WHERE {where} AND retired_at IS NULL",
                              [scope, stage, base_model]).fetchone()
        previous = current and con.execute(
            f"SELECT adapter FROM promotions WHERE {where} AND retired_at IS NOT NULL AND adapter <> ?"
            " ORDER BY promoted_at DESC LIMIT 1", [scope, stage, base_model, current[0]]).fetchone()
        if not previous:
            shown = "" if scope == HOME_SCOPE else f" in {scope}"
            raise InvalidInput(f"no earlier {stage} adapter to roll back to on {base_model}{shown}")
        con.execute(f"UPDATE promotions SET retired_at = ? WHERE {where} AND retired_at IS NULL",
                    [now, scope, stage, base_model])
        con.execute("INSERT INTO promotions VALUES (?, ?, ?, ?, ?, NULL)", [previous[0], stage, base_model, scope, now])
    return get(home, previous[0])
