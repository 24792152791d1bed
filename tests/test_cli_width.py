"""Every listing command at 80 columns and in a pipe: the ids and names of its rows are printed whole.

A terminal is rich's own switch, TTY_COMPATIBLE=1 with COLUMNS=80 (typer's CliRunner is not a TTY), so the tests go
through the same code as a user's terminal; one test runs `cra` in a real 80-column pseudo-terminal, one in a real pipe.
The ledger (a run, a model call, an adapter, training examples, bootstrapped commits) is built once for the module.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from agent.cli import app
from agent.cli.common import Col, Listing, below, extra, ident
from agent.config import load_config
from agent.index.build import index_repo
from agent.llm.calls import CallRecord, log_call
from agent.llm.registry import register
from agent.pipeline import RunOptions, TaskRun, drive
from bootstrap.pairs import bootstrap_repo
from curation.datasets import import_file
from tests.fixtures.decomp import DecompRepo

REPO_ROOT = Path(__file__).resolve().parents[1]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
TERMINAL = {"COLUMNS": "80", "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
PIPE = {"COLUMNS": None, "TTY_COMPATIBLE": None, "FORCE_COLOR": None}
TASK = "Rename CalcNewMinHandAngle to CalcMinuteHandAngle so that the wall clock's minute hand reads as it is"
MODEL = "qwen2.5-coder-7b-instruct:precision-round-12"
ADAPTER = "precision-qwen2.5-coder-7b-round-12-candidate"
SOURCE = "commitpackft-pret"
runner = CliRunner()


@pytest.fixture(scope="module")
def ledger(decomp_template: DecompRepo, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A cra home with a retrieval-only run, a logged call, a long-named adapter, imported examples, bootstrapped commits."""
    root = tmp_path_factory.mktemp("cli-width")
    repo = replace(decomp_template, path=root / "pokefixture").path
    shutil.copytree(decomp_template.path, repo, symlinks=True)
    home = root / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CRA_CONFIG", os.devnull)
        index_repo(repo, home=home, embed=False)
        run = TaskRun(TASK, repo, config=load_config(repo), home=home, options=RunOptions(retrieval_only=True))
        outcome = drive(run)
        bootstrap_repo(repo, config=load_config(repo), home=home, last=2)
    call = log_call(home, CallRecord(
        stage="precision", call_type="chat", provider="vllm", endpoint="http://127.0.0.1:8000/v1", model_requested=MODEL,
        base_model="Qwen/Qwen2.5-Coder-7B-Instruct", resolution="adapter", messages=[{"role": "user", "content": "?"}],
        params={}, run_id=outcome.run_id, model_answered=MODEL, schema_ok=True, latency_ms=1234.5), secrets=[])
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "base_model_name_or_path": "Qwen/Qwen2.5-Coder-7B"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    register(home, adapter, name=ADAPTER, stage="precision", base_model=None)
    pairs = root / "pairs.jsonl"
    pairs.write_text(json.dumps({"messages": [{"role": "user", "content": "?"}, {"role": "assistant", "content": "{}"}]}))
    import_file(home, pairs, stage="plan", source=SOURCE, family="qwen2.5-coder")
    decisions = {stage: [d.candidate for d in result.decisions] for stage, result in outcome.results.items()}
    return SimpleNamespace(repo=repo, home=home, run_id=outcome.run_id, call=call, decisions=decisions)


def invoke(env: dict, *args: object) -> str:
    """`cra ARGS`' stdout, ANSI codes removed; the command must succeed."""
    result = runner.invoke(app, [str(a) for a in args], env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    return ANSI.sub("", result.stdout)


def terminal(*args: object) -> list[str]:
    """`cra ARGS` in an 80-column terminal: its lines, none wider than 80."""
    lines = invoke(TERMINAL, *args).splitlines()
    assert max(cell_len(line) for line in lines) <= 80, "\n".join(lines)
    return lines


def cells(lines: list[str]) -> set[str]:
    """The first lines of the table cells among `lines` (a folded or cut value is not among them whole)."""
    return {cell.strip() for line in lines if line.startswith("│") for cell in line.strip("│").split("│")}


def pipe(*args: object) -> list[list[str]]:
    """`cra ARGS` with stdout not a terminal: its tab-separated lines, split into fields."""
    return [line.split("\t") for line in invoke(PIPE, *args).splitlines()]


def tsv_table(lines: list[list[str]], header: list[str]) -> list[dict[str, str]]:
    """The rows under `header` in a pipe's output, up to the next table; each row has exactly the header's fields."""
    start = lines.index(header) + 1
    rows = []
    for fields in lines[start:]:
        if fields[0].startswith("#") or len(fields) == 1:  # the next table's title or header, or prose
            break
        assert len(fields) == len(header), fields
        rows.append(dict(zip(header, fields)))
    return rows


def test_runs_list(ledger) -> None:
    lines = terminal("runs", "list", "--home", ledger.home)
    assert ledger.run_id in cells(lines)
    assert "--wide shows them" in " ".join(" ".join(lines).split())
    wide = terminal("runs", "list", "--home", ledger.home, "--wide")
    assert ledger.run_id in cells(wide) and "2026-" in " ".join(wide) and "hidden at this width" not in " ".join(wide)
    [row] = tsv_table(pipe("runs", "list", "--home", ledger.home),
                      ["id", "status", "success", "verdict", "kind", "started", "task"])
    assert (row["id"], row["status"], row["kind"], row["task"]) == (ledger.run_id, "succeeded", "rename", TASK)


def test_run_and_runs_show(ledger) -> None:
    precision = ledger.decisions["precision"]
    assert any(len(c) > 30 for c in precision[:15])  # path:name candidates that were cut before
    shown = terminal("runs", "show", ledger.run_id[:12], "--home", ledger.home)
    assert f"run {ledger.run_id}" in " ".join(shown)
    assert set(ledger.decisions["scope"][:15]) | set(precision[:15]) <= cells(shown)
    lines = pipe("runs", "show", ledger.run_id, "--home", ledger.home)
    assert lines[0][0].startswith(f"run {ledger.run_id} ") and "pokefixture @ " in lines[0][0]  # one line, not wrapped
    assert ["# precision (rules)"] in lines
    header = ["candidate", "decision", "score", "reason"]
    rows = tsv_table(lines[lines.index(["# precision (rules)"]):], header)
    assert [r["candidate"] for r in rows][:15] == precision[:15] and all(r["reason"] for r in rows[:15])

    ran = terminal("run", TASK, "--repo", ledger.repo, "--home", ledger.home, "--retrieval-only", "--no-prefect")
    assert precision[0] in cells(ran) and any(line.startswith("run ") and "succeeded" in line for line in ran)
    lines = pipe("run", TASK, "--repo", ledger.repo, "--home", ledger.home, "--retrieval-only", "--no-prefect")
    assert [r["candidate"] for r in tsv_table(lines[lines.index(["# scope (rules)"]):], header)][:15] \
        == ledger.decisions["scope"][:15]


def test_search(ledger) -> None:
    hits = json.loads(invoke(PIPE, "search", "wall clock window", "--repo", ledger.repo, "--home", ledger.home, "--json"))
    files = [h["path"] for h in hits["files"]]
    symbols = [h["name"] for h in hits["symbols"]]
    wheres = [f"{h['path']}:{h['line']}" for h in hits["symbols"]]
    lines = terminal("search", "wall clock window", "--repo", ledger.repo, "--home", ledger.home)
    assert set(files) | set(symbols) | set(wheres) <= cells(lines)
    lines = pipe("search", "wall clock window", "--repo", ledger.repo, "--home", ledger.home)
    assert [r["file"] for r in tsv_table(lines, ["#", "file", "score", "why"])] == files
    found = tsv_table(lines, ["#", "symbol", "kind", "where", "score", "why", "summary", "history"])
    assert [(r["symbol"], r["where"]) for r in found] == list(zip(symbols, wheres))
    assert all(r["why"] for r in found) and any(r["history"] for r in found)


def test_symbol(ledger) -> None:
    [info] = json.loads(invoke(PIPE, "symbol", "InitWallClock", "--repo", ledger.repo, "--home", ledger.home, "--json"))
    names = {c["name"] for c in info["callers"] + info["callees"]}
    assert max(map(len, names)) >= 25  # sSpriteTemplate_MinuteHand
    lines = terminal("symbol", "InitWallClock", "--repo", ledger.repo, "--home", ledger.home)
    assert names <= cells(lines)
    lines = pipe("symbol", "InitWallClock", "--repo", ledger.repo, "--home", ledger.home)
    callers = tsv_table(lines[lines.index([f"# callers ({len(info['callers'])})"]):], ["name", "kind", "reference", "at"])
    assert {(r["name"], r["at"]) for r in callers} == {(c["name"], f"{c['site_path']}:{c['site_line']}")
                                                       for c in info["callers"]}


def test_calls(ledger) -> None:
    lines = terminal("calls", "--home", ledger.home)
    assert {ledger.call, ledger.run_id} <= cells(lines)
    assert "hidden at this width: when, asked, answered" in " ".join(" ".join(lines).split())
    [row] = tsv_table(pipe("calls", "--home", ledger.home), ["id", "when", "run", "stage", "asked", "answered", "ok",
                                                            "repairs", "retries", "ms", "tokens", "note"])
    assert (row["id"], row["run"], row["asked"], row["answered"], row["ms"]) == (ledger.call, ledger.run_id, MODEL, MODEL, "1234")


def test_adapters_list(ledger) -> None:
    assert ADAPTER in cells(terminal("adapters", "list", "--home", ledger.home))
    [row] = tsv_table(pipe("adapters", "list", "--home", ledger.home),
                      ["name", "stage", "status", "trained for", "active in", "base", "rank", "created", "promoted"])
    assert (row["name"], row["status"], row["base"], row["rank"]) == (ADAPTER, "candidate", "Qwen/Qwen2.5-Coder-7B", "16")
    assert (row["trained for"], row["active in"]) == ("home", "-")


def test_datasets_list_and_commits(ledger) -> None:
    assert f"imported:{SOURCE}" in cells(terminal("datasets", "list", "--home", ledger.home))
    rows = tsv_table(pipe("datasets", "list", "--home", ledger.home),
                     ["stage", "source", "family", "split", "project", "examples", "repo"])
    assert {"source": f"imported:{SOURCE}", "family": "qwen2.5-coder", "stage": "plan"}.items() <= \
        next(r for r in rows if r["source"].startswith("imported:")).items()
    assert any(r["repo"] == str(ledger.repo.resolve()) for r in rows)  # a path no 80-column table holds beside the rest

    commits = json.loads(invoke(PIPE, "datasets", "commits", "--home", ledger.home, "--json"))
    assert commits
    assert {c["commit"][:10] for c in commits} <= cells(terminal("datasets", "commits", "--home", ledger.home))
    rows = tsv_table(pipe("datasets", "commits", "--home", ledger.home), ["commit", "status", "pairs", "why"])
    assert [(r["commit"], r["status"]) for r in rows] == [(c["commit"][:10], c["status"]) for c in commits]


def test_models(ledger, tmp_path: Path) -> None:
    models = json.loads(invoke(PIPE, "models", "--repo", tmp_path, "--home", ledger.home, "--json"))
    lines = terminal("models", "--repo", tmp_path, "--home", ledger.home)
    assert {m["stage"] for m in models} | {m["model"] for m in models} <= cells(lines)
    rows = tsv_table(pipe("models", "--repo", tmp_path, "--home", ledger.home), ["stage", "model", "server", "why"])
    assert [(r["stage"], r["model"], r["why"]) for r in rows] == [(m["stage"], m["model"], m["reason"]) for m in models]


def test_projects(ledger) -> None:
    newest = json.loads(invoke(PIPE, "runs", "list", "--home", ledger.home, "--json"))[0]["id"]
    [project] = json.loads(invoke(PIPE, "projects", "--repo", ledger.repo, "--home", ledger.home, "--json"))
    assert project["name"] == "pokefixture" and project["last_run"]["id"] == newest
    assert {"pokefixture", newest} <= {c.split(" (")[0] for c in cells(terminal("projects", "--home", ledger.home))}
    [row] = tsv_table(pipe("projects", "--home", ledger.home),
                      ["project", "checkout", "last run", "index", "examples", "active adapters", "family"])
    assert (row["project"], row["checkout"], row["last run"]) == ("pokefixture", str(ledger.repo.resolve()),
                                                                  f"{newest} (succeeded)")


def cli_env(ledger) -> dict[str, str]:
    """The environment of a `python -m agent.cli` child: this checkout, the module's home, no terminal overrides."""
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "TTY_COMPATIBLE", "FORCE_COLOR")}
    return {**env, "PYTHONPATH": str(REPO_ROOT), "CRA_HOME": str(ledger.home)}


def test_a_real_pipe_gets_tab_separated_rows(ledger) -> None:
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "runs", "list"], cwd=REPO_ROOT, env=cli_env(ledger),
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[0] == "id\tstatus\tsuccess\tverdict\tkind\tstarted\ttask"
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()[1:]][-1] == ledger.run_id


def test_a_real_80_column_terminal_shows_run_ids_whole(ledger) -> None:
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "runs", "list"], cwd=REPO_ROOT, env=cli_env(ledger),
                            stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    lines = ANSI.sub("", b"".join(chunks).decode()).replace("\r", "").splitlines()
    assert max(cell_len(line) for line in lines) <= 80 and "┃ id" in "".join(lines)
    assert ledger.run_id in cells(lines)


def test_a_listing_fits_its_width_and_keeps_every_column_in_a_pipe() -> None:
    columns = (ident("name"), "kind", extra("why"), below("note"), Col("text", clip=12))
    row = ("sSpriteTemplate_MinuteHand", "global", "text 1.00, pagerank 0.01", "a note", "a long text to clip")
    listing, wide = Listing(columns), Listing(columns, wide=True)
    for each in (listing, wide):
        each.add_row(*row)
        each.add_row()  # empty cells measure as one character
    assert listing.tsv().splitlines() == ["name\tkind\twhy\tnote\ttext", "\t".join(row), "\t\t\t\t"]
    table = listing.table(50)
    assert [c.header for c in table.columns] == ["name", "kind", "text"] and "why" in str(table.caption)
    assert table.columns[0].width == len(row[0]) and sum(c.width for c in table.columns) + 10 <= 50
    assert table.columns[0]._cells[0].plain == f"{row[0]}\na note"  # the "below" column under the identifier
    assert table.columns[2]._cells[0].plain == "a long text…"
    table = wide.table(40)
    assert [c.header for c in table.columns] == ["name", "kind", "why", "text"] and table.caption is None
    assert table.columns[3]._cells[0].plain == row[4]
