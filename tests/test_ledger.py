"""The home ledger, its tables declared by their owners: a ledger from before opens with its rows, and a read-only
open finds every registered table."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

from agent.config import ledger_path
from agent.llm.calls import get_call, model_seconds
from agent.llm.registry import list_adapters
from agent.runs import get_run
from agent.store.ledger import LEDGER, ledger
from bootstrap.pairs import StoredSplit, commit_log, stored_split
from curation.datasets import load_examples
from curation.gate import plateaued
from curation.rounds import StageMix, load_round, logged_stages, preference_pairs_by_id

BEFORE = Path(__file__).parent / "fixtures" / "ledger_before_owners.sql"  # agent/store/ledger.py's l001-l007
COLUMNS = "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal ORDER BY ALL"


def test_a_ledger_from_before_the_owners_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    with duckdb.connect(str(ledger_path())) as con:
        con.execute(BEFORE.read_text())
    with ledger(None) as con:
        migrated = con.execute(COLUMNS).fetchall()
        recorded = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
        assert con.execute("SELECT count(*) FROM teacher_cache").fetchone() == (1,)
    assert recorded == {step.__name__ for step in LEDGER.steps}  # l004_bootstrap_commits: bootstrap_commits was there
    with ledger(tmp_path / "fresh") as con:
        assert con.execute(COLUMNS).fetchall() == migrated  # the same tables and columns as a new ledger's

    assert get_call(None, "call1").parsed == {"files": ["src/foo.c"]} and model_seconds(None, "run1") == 1.5
    run = get_run(None, "run1")
    assert run.status == "succeeded" and [s["stage"] for s in run.stages] == ["scope"] and len(run.decisions) == 1
    [logged] = logged_stages(None)
    assert (logged.run_id, logged.good, logged.used, logged.discarded) == ("run1", True, {"files": ["src/foo.c"]}, [])
    assert [a.name for a in list_adapters(None, status="active")] == ["scope-r1"]
    assert [e.commit_sha for e in load_examples(None, stage="scope", split="eval")] == ["abc123"]
    assert [(c["commit"], c["status"]) for c in commit_log(None)] == [("abc123", "derived")]
    assert stored_split(None, Path("/repo")) == StoredSplit(1, 1, datetime(2026, 10, 1, 8))
    assert load_round(None, 1).mixes == {("scope", "qwen3"): StageMix(new=["example1"])}
    assert [chosen.stage for chosen, _ in preference_pairs_by_id(None, ["pair1"])] == ["code"]
    assert not plateaued(None, "scope")


def test_a_read_only_open_creates_the_registered_tables_a_ledger_lacks() -> None:
    with duckdb.connect(str(ledger_path())) as con:  # a ledger written last by a process that imported no owner
        con.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMP DEFAULT now())")
    assert model_seconds(None, "run1") == 0.0  # a read-only open of llm_calls
    with ledger(None, read_only=True) as con:
        assert LEDGER.pending(con) == []


def test_a_migration_name_is_registered_once() -> None:
    def l003_runs(con: duckdb.DuckDBPyConnection) -> None:
        """A second table history under a name the run log's already has."""

    with pytest.raises(ValueError, match="l003_runs"):
        LEDGER.migration(l003_runs)


def test_threads_opening_a_new_ledger_at_once_migrate_it_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def count(_: int) -> int:
        with ledger(tmp_path / "home") as con:
            return con.execute("SELECT count(*) FROM _migrations").fetchone()[0]

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(count, range(8)))
    assert counts == [len(LEDGER.steps)] * 8
