"""The adapter registry: every adapter in the cra home's adapter store, with its stage, base and status."""

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
from agent.store import transaction, utc_now
from agent.store.ledger import LEDGER, ledger

STATUSES = ("candidate", "active", "retired")
METADATA_FILE = "cra_adapter.json"  # what cra's training says of an adapter it trained
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", METADATA_FILE, "README.md")  # all the store keeps
MAX_ADAPTER_BYTES = 8 << 30
_COLUMNS = "name, stage, base_model, base_fingerprint, path, rank, status, created_at, promoted_at, metadata"


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


@dataclass(frozen=True)
class Adapter:
    """One registered adapter."""

    name: str
    stage: str
    base_model: str
    base_fingerprint: str | None
    path: Path
    rank: int
    status: str
    created_at: datetime
    promoted_at: datetime | None
    metadata: dict = field(default_factory=dict)


def _adapter(row: tuple) -> Adapter:
    *head, metadata = row
    return Adapter(*head[:4], Path(head[4]), *head[5:], metadata=json.loads(metadata) if metadata else {})


def stored_path(home: str | Path | None, adapter: Adapter) -> Path:
    """The adapter's folder, refused if the registry points outside the adapter store."""
    store = adapter_store(home).resolve()
    path = adapter.path.resolve()
    if not path.is_relative_to(store):
        raise UnsafeName(f"adapter {adapter.name} points at {path}, outside the adapter store {store}; register it again")
    return path


def register(
    home: str | Path | None, source: Path, *, name: str, stage: str, base_model: str | None,
    metadata: dict | None = None,
) -> Adapter:
    """Copy the adapter at `source` into the adapter store and record it as a candidate for `stage`.

    `base_model` is the base it is registered for; None takes the base the adapter's own config names, and an
    adapter naming another base than `base_model` is refused.
    """
    check_name(name, what="adapter name")
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
                f"INSERT INTO adapters ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?, NULL, ?)",
                [name, stage, base_model, base.fingerprint, str(target), files.rank, utc_now(), json.dumps(metadata or {})],
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
        row = con.execute(f"SELECT {_COLUMNS} FROM adapters WHERE name = ?", [name]).fetchone()
    if row is None:
        raise UnknownAdapter(f"no adapter named {name} in the registry; `cra adapters list` shows them")
    return _adapter(row)


def list_adapters(home: str | Path | None, *, stage: str | None = None, status: str | None = None) -> list[Adapter]:
    """Registered adapters, newest first, optionally of one stage or status."""
    with ledger(home) as con:
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM adapters WHERE (? IS NULL OR stage = ?) AND (? IS NULL OR status = ?)"
            " ORDER BY created_at DESC, name",
            [stage, stage, status, status],
        ).fetchall()
    return [_adapter(row) for row in rows]


def active_adapters(home: str | Path | None) -> list[Adapter]:
    """Every active adapter (at most one per stage and base)."""
    return list_adapters(home, status="active")


def record_evaluation(home: str | Path | None, name: str, evaluation: dict) -> Adapter:
    """Keep an adapter's held-out evaluation in its metadata."""
    adapter = get(home, name)
    with ledger(home) as con:
        con.execute("UPDATE adapters SET metadata = ? WHERE name = ?",
                    [json.dumps({**adapter.metadata, "evaluation": evaluation}), name])
    return get(home, name)


def promote(home: str | Path | None, name: str, *, require_evaluation: bool = False) -> Adapter:
    """Make `name` the active adapter of its stage on its base; the one it replaces is retired."""
    adapter = get(home, name)
    stored_path(home, adapter)
    if require_evaluation and "evaluation" not in adapter.metadata:
        raise InvalidInput(f"adapter {name} has no evaluation; run `cra gate {name}` first (or promote with --force)")
    if adapter.status == "active":
        return adapter
    with ledger(home) as con, transaction(con):
        con.execute(
            "UPDATE adapters SET status = 'retired' WHERE stage = ? AND base_model = ? AND status = 'active'",
            [adapter.stage, adapter.base_model],
        )
        con.execute("UPDATE adapters SET status = 'active', promoted_at = ? WHERE name = ?", [utc_now(), name])
    return get(home, name)


def require_files(home: str | Path | None, adapter: Adapter) -> Path:
    """The adapter's folder, checked to be inside the store and to hold a LoRA adapter."""
    path = stored_path(home, adapter)
    try:
        read_adapter(path)
    except BadAdapter as exc:
        raise BadAdapter(f"registered adapter {adapter.name}: {exc}") from exc
    return path


def rollback(home: str | Path | None, stage: str, base_model: str) -> Adapter:
    """Retire the active adapter of `stage` on `base_model` and bring back the one it replaced."""
    with ledger(home) as con, transaction(con):
        current = con.execute("SELECT name FROM adapters WHERE stage = ? AND base_model = ? AND status = 'active'",
                              [stage, base_model]).fetchone()
        previous = con.execute(
            "SELECT name FROM adapters WHERE stage = ? AND base_model = ? AND status = 'retired' AND promoted_at IS NOT NULL"
            " ORDER BY promoted_at DESC LIMIT 1", [stage, base_model]).fetchone()
        if current is None or previous is None:
            raise InvalidInput(f"no earlier {stage} adapter to roll back to on {base_model}")
        con.execute("UPDATE adapters SET status = 'retired' WHERE name = ?", [current[0]])
        con.execute("UPDATE adapters SET status = 'active', promoted_at = ? WHERE name = ?", [utc_now(), previous[0]])
    return get(home, previous[0])
