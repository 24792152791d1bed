"""`cra bootstrap` on the fixture decomp: stored pairs, idempotent re-runs, resume, the Prefect flow on a local Dask cluster."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import ledger_path, load_config
from bootstrap.pairs import SCRATCH_PREFIX, bootstrap_repo, label_plans
from curation.datasets import load_examples, summary
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.mining import make_small_repo

runner = CliRunner()


def example_ids(home: Path) -> set[str]:
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    try:
        return {r[0] for r in con.execute("SELECT id FROM training_examples").fetchall()}
    finally:
        con.close()


def pairs_by_commit(home: Path) -> dict[tuple[str, str], str | None]:
    """(commit, stage) -> the code stage's answer (other stages' prompts carry retrieval scores, which vary slightly
    with the path the index took through history, so only their presence is compared)."""
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    try:
        rows = con.execute("SELECT commit_sha, stage, CASE WHEN stage = 'code' THEN output::VARCHAR END"
                           " FROM training_examples").fetchall()
    finally:
        con.close()
    return {(sha, stage): out for sha, stage, out in rows}


def test_bootstrap_stores_pairs_per_stage_and_reruns_add_nothing(decomp_template: DecompRepo, isolated_cra_home: Path) -> None:
    result = runner.invoke(app, ["bootstrap", "--repo", str(decomp_template.path), "--no-prefect", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["seen"] == len(decomp_template.commits) and report["kept"] >= 10
    assert report["dropped"]["merge commit"] == 1
    derive = report["derive"]
    assert set(derive["pairs"]) == {"task_analysis", "scope", "precision", "plan", "code"}
    assert derive["code_exact"] == derive["code_tried"] > 0  # every code pair's edits re-apply exactly
    counts = {(r["stage"], r["split"]): r["examples"] for r in summary(None)}
    assert counts[("plan", "eval")] >= 1 and counts[("plan", "train")] > counts[("plan", "eval")]
    newest_eval = max(e.commit_date for e in load_examples(None, stage="plan", split="eval"))
    assert all(e.commit_date <= newest_eval for e in load_examples(None, stage="plan", split="train"))
    before = example_ids(isolated_cra_home)
    again = runner.invoke(app, ["bootstrap", "--repo", str(decomp_template.path), "--no-prefect", "--json"])
    assert json.loads(again.output)["derive"]["commits"] == 0 and example_ids(isolated_cra_home) == before
    exported = runner.invoke(app, ["datasets", "export", "--stage", "code", "--out", str(isolated_cra_home / "code.jsonl")])
    assert exported.exit_code == 0, exported.output
    first = json.loads((isolated_cra_home / "code.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]


def test_an_interrupted_bootstrap_resumes_with_only_the_rest(decomp_template: DecompRepo) -> None:
    config = load_config(decomp_template.path)
    first = bootstrap_repo(decomp_template.path, config=config, last=3)
    assert first.derive.commits == 3
    rest = bootstrap_repo(decomp_template.path, config=config)
    assert rest.derive.commits == first.kept - 3  # the three done are not mined again
    con = duckdb.connect(str(ledger_path()), read_only=True)
    dupes = con.execute("SELECT count(*) FROM (SELECT commit_sha, stage FROM training_examples"
                        " GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
    con.close()
    assert dupes == 0


def test_prefect_flow_on_a_local_dask_cluster_stores_the_same_pairs(
    prefect_api, decomp_template: DecompRepo, tmp_path: Path,
) -> None:
    direct, flowed = tmp_path / "direct", tmp_path / "flowed"
    config = load_config(decomp_template.path)
    bootstrap_repo(decomp_template.path, config=config, home=direct, last=4)
    from flows.bootstrap import run_bootstrap_flow

    report = run_bootstrap_flow(decomp_template.path, config=config, home=str(flowed), use_teacher=False, last=4,
                                partitions=2, dask_workers=2)
    assert report.derive.derived > 0
    assert pairs_by_commit(flowed) == pairs_by_commit(direct)


def test_a_teacher_that_is_down_leaves_every_pair_unlabelled(decomp_template: DecompRepo, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    (tmp_path / "cra.toml").write_text(f'[models]\nmax_retries = 0\n[teacher]\nendpoint = "http://127.0.0.1:{port}/v1"\n'
                                       'model = "big-teacher"\nconcurrency = 2\n')
    config = load_config(tmp_path)
    bootstrap_repo(decomp_template.path, config=config, last=3)
    pending = len(load_examples(None, stage="plan"))
    report = label_plans(None, config, decomp_template.path)
    assert pending > 0 and report.labelled == 0 and report.failed == {"ModelUnavailable": pending}
    assert all(e.output for e in load_examples(None, stage="plan"))
    con = duckdb.connect(str(ledger_path()), read_only=True)
    assert con.execute("SELECT count(*) FROM training_examples WHERE teacher IS NOT NULL").fetchone()[0] == 0
    con.close()


def test_the_flow_records_commits_with_missing_objects_as_skipped(prefect_api, tmp_path: Path) -> None:
    repo = make_small_repo(tmp_path / "lost")
    fixed = repo.commit("Fix the minute hand step", repo.edit("src/clock.c", "angle + 6", "angle + 5"))
    repo.commit("Add the hour hand speed", {"src/hours.c": "int gHourHandSpeed = 2;\n"})
    repo.drop_object("HEAD:src/clock.c")  # after the last commit, which would write it again
    from flows.bootstrap import run_bootstrap_flow

    report = run_bootstrap_flow(repo.path, config=load_config(repo.path), home=None, use_teacher=False, last=None)
    assert report.dropped["missing objects"] == 1
    shown = runner.invoke(app, ["datasets", "commits", "--repo", str(repo.path), "--status", "skipped", "--json"])
    assert shown.exit_code == 0, shown.output
    reasons = {r["commit"]: r["reason"] for r in json.loads(shown.output)}
    assert reasons[fixed].startswith("missing objects")
    again = run_bootstrap_flow(repo.path, config=load_config(repo.path), home=None, use_teacher=False, last=None)
    assert "missing objects" not in again.dropped and again.kept == 0  # recorded for good: not mined again


def splits(home: Path) -> dict[str, str]:
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    try:
        return dict(con.execute("SELECT DISTINCT commit_sha, split FROM training_examples").fetchall())
    finally:
        con.close()


def test_a_pass_resumed_after_a_kill_holds_out_what_an_uninterrupted_one_does(decomp_template: DecompRepo,
                                                                              tmp_path: Path) -> None:
    config = load_config(decomp_template.path)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    bootstrap_repo(decomp_template.path, config=config, home=whole, last=10)

    def killed_before_the_last_three(message: str) -> None:
        step = re.match(r"(\d+)/(\d+) [0-9a-f]{10} ", message)
        if step and int(step[1]) == int(step[2]) - 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bootstrap_repo(decomp_template.path, config=config, home=resumed, last=10, on_progress=killed_before_the_last_three)
    assert len(splits(resumed)) < len(splits(whole)) and "eval" not in splits(resumed).values()
    assert bootstrap_repo(decomp_template.path, config=config, home=resumed, last=10).derive.commits == 3  # the rest
    assert splits(resumed) == splits(whole) and "eval" in splits(whole).values()
    assert bootstrap_repo(decomp_template.path, config=config, home=resumed, last=10).derive.commits == 0


def test_a_walk_removes_what_killed_walks_left_behind(decomp_template: DecompRepo, tmp_path: Path) -> None:
    ended = subprocess.Popen(["true"])
    ended.wait()
    left = Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}{ended.pid}-killed"
    (left / "home").mkdir(parents=True)
    running = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-"))
    try:
        bootstrap_repo(decomp_template.path, config=load_config(decomp_template.path), home=tmp_path, last=1)
        assert not left.exists() and running.exists()
    finally:
        shutil.rmtree(running)
