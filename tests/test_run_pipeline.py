"""`cra run` end to end on the fixture decomp: stages, worktree, edits, real validation (make, make compare), the run log.

The model here is a scripted stand-in server answering per stage; tests/test_run_vllm.py runs the real tiny model.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent.builds import BuildEnvironment, MissingBuildTool
from agent.cli import app
from agent.config import ledger_path, load_config, project_paths
from agent.errors import CraError, InvalidInput
from agent.index.build import index_repo
from agent.llm.budget import CUT, budget_for
from agent.llm.roles import ROLES
from agent.pipeline import RunOptions, TaskRun, drive
from agent.runs import get_run, list_runs
from agent.stages import RECIPES, STAGE_NAMES, STAGE_ROLES, stage_named, stages_of
from curation.datasets import load_examples
from tests.fixtures.decomp import DecompRepo, host_build_missing
from tests.fixtures.models import chat_reply, standin_server

runner = CliRunner()
OLD, NEW = "CalcNewMinHandAngle", "CalcMinuteHandAngle"
WALLCLOCK = "src/wallclock.c"


def tree_digest(root: Path) -> str:
    """A hash of every file in the checkout (not .git), to prove a run leaves it untouched."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def indexed(decomp_repo: DecompRepo) -> DecompRepo:
    index_repo(decomp_repo.path, embed=False)
    return decomp_repo


def rename_edits(text: str, old: str, new: str) -> list[dict]:
    """One search/replace block per line mentioning `old`, each grown upwards until it matches one place only."""
    lines = text.splitlines()
    edits = []
    for i, line in enumerate(lines):
        if old not in line:
            continue
        start = i
        while text.count("\n".join(lines[start:i + 1])) > 1:
            start -= 1
        block = "\n".join(lines[start:i + 1])
        edits.append({"path": WALLCLOCK, "search": block, "replace": block.replace(old, new)})
    return edits


def scripted(answers: dict[str, object]):
    """A stand-in model answering each stage (told apart by the schema's name) with a fixed JSON value."""
    def respond(body: dict) -> tuple[int, dict]:
        name = body["response_format"]["json_schema"]["name"]
        value = answers[name]
        return chat_reply(json.dumps(value(body) if callable(value) else value))
    return respond


def answers_for(kind: str, keep_rom: bool, edits: list[dict]) -> dict[str, object]:
    return {
        "TaskAnalysis": {"kind": kind, "key_terms": ["minute", "hand"], "symbols": [OLD], "files": [WALLCLOCK],
                         "subsystems": ["wallclock"], "keep_rom": keep_rom},
        "ScopeOutput": {"files": [{"path": WALLCLOCK, "label": "relevant", "reason": f"defines {OLD}"},
                                  {"path": "../../etc/passwd", "label": "relevant", "reason": "escape attempt"}]},
        "PrecisionOutput": {"symbols": [{"name": OLD, "path": WALLCLOCK, "tier": "primary", "reason": "the task names it"}]},
        "Plan": {"summary": "change the minute hand code", "steps": [
            {"file": WALLCLOCK, "symbols": [OLD], "change": "edit it"},
            {"file": "../outside.c", "symbols": [], "change": "should be dropped"}]},
        "CodeEdits": {"edits": edits},
    }


def run_with(tmp_path: Path, repo: DecompRepo, task: str, answers: dict, **options) -> tuple:
    with standin_server(scripted(answers)) as server:
        (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           f'[models.coding]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           '[validation]\ntimeout_s = 120\n')
        run = TaskRun(task, repo.path, config=load_config(tmp_path), options=RunOptions(**options))
        return drive(run), server


def test_every_stage_fact_comes_from_the_pipeline() -> None:
    assert STAGE_NAMES == tuple(STAGE_ROLES) == tuple(RECIPES) == ("task_analysis", "scope", "precision", "plan", "code")
    assert set(STAGE_ROLES.values()) <= set(ROLES) and stages_of("coding") == ["code"]
    with pytest.raises(InvalidInput, match="unknown stage 'summary'; stages are task_analysis, scope"):
        stage_named("summary")  # it was scored as a code answer (a KeyError on "edits"), now it is refused
    with pytest.raises(InvalidInput, match="unknown stage"):
        load_examples(None, stage="summary")


def test_rename_passes_build_and_compare_and_leaves_the_checkout_untouched(tmp_path: Path, indexed: DecompRepo) -> None:
    if reason := host_build_missing():
        pytest.skip(reason)
    before = tree_digest(indexed.path)
    text = (indexed.path / WALLCLOCK).read_text()
    outcome, server = run_with(tmp_path, indexed, f"Rename {OLD} to {NEW}", answers_for("rename", True, rename_edits(text, OLD, NEW)))
    assert outcome.status == "succeeded" and outcome.success is True, outcome.validation
    checks = {c.name: c for c in outcome.validation.checks}
    assert checks["parse"].passed and checks["build"].passed and checks["compare"].passed
    assert outcome.validation.rom_changed is False
    assert tree_digest(indexed.path) == before  # the user's checkout is untouched
    assert "../../etc/passwd" in " ".join(outcome.results["scope"].notes)  # a path outside the repo is dropped
    assert [s.file for s in outcome.results["plan"].output.steps] == [WALLCLOCK]
    patch = outcome.patch.read_text()
    assert f"+static u16 {NEW}(u16 angle" in patch and outcome.branch == f"cra/run-{outcome.run_id}"
    assert {r["model"] for r in server.requests} == {"tiny"}
    run = get_run(None, outcome.run_id)
    assert (run.status, run.success, run.kind, run.keep_rom, run.rom_changed) == ("succeeded", True, "rename", True, False)
    assert [s["stage"] for s in run.stages] == list(STAGE_NAMES)
    assert all(s["source"] == "model" and s["call_ids"] for s in run.stages)
    scope_rows = {(d["candidate"], d["decision"]) for d in run.decisions if d["stage"] == "scope"}
    assert (WALLCLOCK, "relevant") in scope_rows
    applied = runner.invoke(app, ["apply", outcome.run_id, "--repo", str(indexed.path)])
    assert applied.exit_code == 0, applied.output
    assert NEW in (indexed.path / WALLCLOCK).read_text() and OLD not in (indexed.path / WALLCLOCK).read_text()


def test_behaviour_change_builds_but_fails_compare(tmp_path: Path, indexed: DecompRepo) -> None:
    if reason := host_build_missing():
        pytest.skip(reason)
    edit = [{"path": WALLCLOCK, "search": "        delta = 1;", "replace": "        delta = 2;"}]
    documented, _ = run_with(tmp_path, indexed, f"Document {OLD}", answers_for("documentation", True, edit))
    assert documented.status == "failed" and documented.validation.rom_changed is True
    assert documented.validation.check("build").passed and not documented.validation.check("compare").passed
    fixed, _ = run_with(tmp_path, indexed, f"Fix {OLD} step", answers_for("bug_fix", False, edit))
    assert fixed.status == "succeeded" and fixed.validation.rom_changed is True  # a fix may change the ROM


def test_broken_edit_stops_at_the_parse_check_and_is_recorded(tmp_path: Path, indexed: DecompRepo) -> None:
    edit = [{"path": WALLCLOCK, "search": "    u8 delta;\n", "replace": "    u8 delta = (;\n"}]
    outcome, _ = run_with(tmp_path, indexed, f"Refactor {OLD}", answers_for("refactor", True, edit))
    assert outcome.status == "failed"
    parse, build, _ = outcome.validation.checks
    assert not parse.passed and parse.log_tail.startswith(f"{WALLCLOCK}:")  # the broken line is named
    assert build.skipped_reason == "the parse check failed" and build.exit_code is None
    stored = get_run(None, outcome.run_id)
    assert stored.validation["checks"][0]["log_tail"] == parse.log_tail and stored.validation["checks"][1]["skipped_reason"]


def test_the_gate_and_a_run_build_with_the_same_carried_paths(tmp_path: Path, indexed: DecompRepo) -> None:
    from curation.datasets import Example
    from curation.gate import validates

    tool = indexed.path / "tools/fakecc"  # an ignored, installed tool, as pret's tools/agbcc
    tool.mkdir(parents=True)
    (tool / "marker").write_text("installed\n")
    with (indexed.path / ".git/info/exclude").open("a") as exclude:
        exclude.write("tools/fakecc/\n")
    needs = "test -f tools/fakecc/marker && echo carried: $(readlink tools/fakecc)"
    settings = (f'[validation]\ncarry = ["tools/fakecc"]\nbuild = ["sh", "-c", "{needs}"]\n'
                f'compare = ["sh", "-c", "{needs}"]\n')
    text = (indexed.path / WALLCLOCK).read_text()
    with standin_server(scripted(answers_for("rename", True, rename_edits(text, OLD, NEW)))) as server:
        (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           f'[models.coding]\nbase = "tiny"\nendpoint = "{server.url}"\n' + settings)
        config = load_config(tmp_path)
        outcome = drive(TaskRun(f"Rename {OLD} to {NEW}", indexed.path, config=config, options=RunOptions()))
    assert outcome.success, outcome.validation
    example = Example(stage="code", source="bootstrap", family="qwen2.5-coder", messages=[], output={},
                      repo=str(indexed.path), commit_sha=indexed.head)
    parent_text = subprocess.run(["git", "-C", str(indexed.path), "show", f"{indexed.head}^:{WALLCLOCK}"],
                                 capture_output=True, text=True, check=True).stdout
    env = BuildEnvironment.of(indexed.path, config.validation)
    assert validates(example, rename_edits(parent_text, OLD, NEW), env) is True
    logs = [outcome.validation.check("build").log_tail]
    assert logs == [f"carried: {tool}"]
    assert env.carried() == [("tools/fakecc", tool)]


def test_a_run_without_the_build_tool_stops_before_any_model_call(tmp_path: Path, indexed: DecompRepo) -> None:
    with standin_server(scripted({})) as server:
        (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           f'[models.coding]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           '[validation]\ncarry = ["tools/agbcc"]\n')
        run = TaskRun(f"Rename {OLD} to {NEW}", indexed.path, config=load_config(tmp_path), options=RunOptions())
        with pytest.raises(MissingBuildTool, match="tools/agbcc"):
            drive(run)
        assert server.requests == []
    assert get_run(None, run.run_id).status == "error"
    branches = subprocess.run(["git", "-C", str(indexed.path), "branch", "--list", "cra/*"], capture_output=True,
                              text=True, check=True).stdout
    assert branches == "" and not (indexed.path / "tools").exists()


def test_edits_that_never_apply_are_fed_back_then_the_run_fails(tmp_path: Path, indexed: DecompRepo) -> None:
    attempts = []

    def bad_edits(body: dict) -> dict:
        attempts.append(body["messages"][-1]["content"])
        return {"edits": [{"path": "../../escape.c", "search": "", "replace": "int x;"},
                          {"path": WALLCLOCK, "search": "no such text", "replace": "x"}]}

    outcome, _ = run_with(tmp_path, indexed, f"Refactor {OLD}", answers_for("refactor", True, []) | {"CodeEdits": bad_edits})
    assert outcome.status == "failed" and outcome.validation is None and outcome.patch is None
    assert len(attempts) == 3  # the first ask and two retries, each retry carrying the error
    assert "escape.c" in attempts[1] and "Send all the edits again" in attempts[1]
    assert not (indexed.path.parent / "escape.c").exists()
    assert get_run(None, outcome.run_id).stages[-1]["detail"]["failed"] is True


def test_a_failed_run_exits_1_with_or_without_json(tmp_path: Path, indexed: DecompRepo) -> None:
    answers = answers_for("refactor", True, [{"path": WALLCLOCK, "search": "no such text", "replace": "x"}])
    with standin_server(scripted(answers)) as server:
        (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           f'[models.coding]\nbase = "tiny"\nendpoint = "{server.url}"\n')
        for as_json in (["--json"], []):
            result = runner.invoke(app, ["run", f"Refactor {OLD}", "--repo", str(indexed.path), "--no-prefect",
                                         "--config", str(tmp_path / "cra.toml"), *as_json])
            assert result.exit_code == 1, result.output  # --json exited 0 on a failed run
            if as_json:
                assert json.loads(result.stdout)["status"] == "failed"


def test_curation_learns_from_the_attempt_that_applied_and_prefers_it_to_the_ones_that_did_not(
        tmp_path: Path, indexed: DecompRepo) -> None:
    from curation.datasets import load_examples
    from curation.rounds import collect_logged

    if reason := host_build_missing():
        pytest.skip(reason)
    text = (indexed.path / WALLCLOCK).read_text()
    good = rename_edits(text, OLD, NEW)
    wrong = {"edits": [{"path": WALLCLOCK, "search": "no such text", "replace": "x"}]}
    prompts = []

    def second_time_right(body: dict) -> dict:
        prompts.append(body["messages"])
        return wrong if len(prompts) == 1 else {"edits": good}

    outcome, _ = run_with(tmp_path, indexed, f"Rename {OLD} to {NEW}",
                          answers_for("rename", True, good) | {"CodeEdits": second_time_right})
    assert outcome.success and outcome.results["code"].detail["attempts"] == 2
    sft, dpo = collect_logged(None, load_config(tmp_path))
    code = load_examples(None, stage="code", source="logged")
    assert [e.output for e in code] == [{"edits": good}]  # the edits that applied and validated, not the first try
    assert code[0].messages == prompts[0]  # on the original prompt, without the retry's feedback turns
    con = duckdb.connect(str(ledger_path()), read_only=True)
    pairs = con.execute("SELECT messages, chosen, rejected FROM preference_pairs WHERE stage = 'code'").fetchall()
    con.close()
    assert [(json.loads(m), json.loads(c), json.loads(r)) for m, c, r in pairs] == [(prompts[0], {"edits": good}, wrong)]
    assert sft == 5 and dpo == 1


def test_a_long_prompt_loses_context_never_its_instructions(tmp_path: Path, indexed: DecompRepo, tiny_models) -> None:
    prompts = {}

    def remember(name: str, value: dict):
        def answer(body: dict) -> dict:
            prompts[name] = body["messages"][-1]["content"]
            return value
        return answer

    answers = answers_for("rename", True, [])
    answers = {name: remember(name, value) for name, value in answers.items()}
    with standin_server(scripted(answers)) as server:
        # the tiny model's own tokenizer counts; a 1,000-token context less a 256-token answer leaves little room
        (tmp_path / "cra.toml").write_text(
            f'[models]\nmax_tokens = 256\n[models.reasoning]\nbase = "{tiny_models.base}"\nendpoint = "{server.url}"\n'
            f'[models.coding]\nbase = "{tiny_models.base}"\nendpoint = "{server.url}"\n[serve]\nmax_model_len = 1000\n')
        outcome = drive(TaskRun(f"Rename {OLD} to {NEW}", indexed.path, config=load_config(tmp_path),
                                options=RunOptions(until="precision")))
    scope = prompts["ScopeOutput"]
    assert scope.endswith("Use only the paths listed.") and scope.startswith(f"Task: Rename {OLD} to {NEW}")
    notes = get_run(None, outcome.run_id).stages[1]["notes"]
    assert any(n.startswith("prompt budget (") and f"the tokenizer of {tiny_models.base}" in n
               and "candidate files shown whole" in n for n in notes), notes
    shown = [line for line in scope.splitlines() if line.startswith("- ")]
    assert 0 < len(shown) < len(outcome.results["scope"].output.files), notes  # some went, the best stayed


def test_a_model_analysis_at_the_schemas_limit_never_pushes_a_later_prompt_past_the_context(
        tmp_path: Path, indexed: DecompRepo, tiny_models) -> None:
    # The analysis goes into every later prompt whole; a random model's, at the schema's limits, took more tokens than
    # a 1,000-token context leaves, and vLLM refused the scope prompt (a run failed on its own model's output).
    noise = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(64))  # a Short at its limit, 6 escaped chars a char
    prompts = {}

    def remember(name: str, value: dict):
        def answer(body: dict) -> dict:
            prompts[name] = body["messages"]
            return value
        return answer

    largest = {"kind": "rename", "key_terms": [noise] * 8, "symbols": [OLD] + [noise] * 7,
               "files": [WALLCLOCK] + [f"src/{noise}.c"] * 4, "subsystems": [noise] * 5, "keep_rom": True}
    answers = answers_for("rename", True, []) | {"TaskAnalysis": largest}
    answers = {name: remember(name, value) for name, value in answers.items()}
    with standin_server(scripted(answers)) as server:
        (tmp_path / "cra.toml").write_text(
            f'[models]\nmax_tokens = 256\n[models.reasoning]\nbase = "{tiny_models.base}"\nendpoint = "{server.url}"\n'
            f'[models.coding]\nbase = "{tiny_models.base}"\nendpoint = "{server.url}"\n[serve]\nmax_model_len = 1000\n')
        drive(TaskRun(f"Rename {OLD} to {NEW}", indexed.path, config=load_config(tmp_path),
                      options=RunOptions(until="plan")))
    budget = budget_for(tiny_models.base, max_model_len=1000, answer_tokens=256)
    assert budget.count(json.dumps(largest)) > budget.tokens  # whole, this analysis alone would not fit
    for name in ("ScopeOutput", "PrecisionOutput", "Plan"):
        shown = [line for line in prompts[name][-1]["content"].splitlines() if line.startswith("Analysis: ")]
        assert shown and shown[0].endswith(CUT) and shown[0].startswith('Analysis: {"kind": "rename"'), name
        assert sum(budget.count(m["content"]) for m in prompts[name]) <= budget.tokens, name


def test_code_excerpts_come_from_the_text_the_model_edits(tmp_path: Path, indexed: DecompRepo) -> None:
    # The user's uncommitted edit shifts every line of the file; the index holds it, the run starts from HEAD.
    path = indexed.path / WALLCLOCK
    head_text = path.read_text()
    path.write_text("// a note\n" * 40 + head_text)
    index_repo(indexed.path, embed=False)
    outcome, _ = run_with(tmp_path, indexed, f"Rename {OLD} to {NEW}", answers_for("rename", True, rename_edits(
        head_text, OLD, NEW)))
    excerpts = get_run(None, outcome.run_id).stages[-1]["input"]["excerpts"]
    mine = [e for e in excerpts if e["path"] == WALLCLOCK]
    lines = head_text.splitlines()
    assert mine and all(e["text"].splitlines()[0] == lines[e["start_line"] - 1] for e in mine)
    assert any(e["text"].startswith(f"static u16 {OLD}(") for e in mine)


def test_retrieval_only_needs_no_model_and_logs_decisions(indexed: DecompRepo) -> None:
    before = tree_digest(indexed.path)
    result = runner.invoke(app, ["run", f"Rename {OLD} to {NEW}", "--repo", str(indexed.path), "--retrieval-only",
                                 "--no-prefect", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert list(data["stages"]) == ["task_analysis", "scope", "precision"]
    analysis = data["stages"]["task_analysis"]["output"]
    assert (analysis["kind"], analysis["keep_rom"], analysis["symbols"]) == ("rename", True, [OLD])
    relevant = [f["path"] for f in data["stages"]["scope"]["output"]["files"] if f["label"] == "relevant"]
    assert relevant == [WALLCLOCK]
    primary = [s["name"] for s in data["stages"]["precision"]["output"]["symbols"] if s["tier"] == "primary"]
    assert primary[0] == OLD
    assert tree_digest(indexed.path) == before
    con = duckdb.connect(str(ledger_path()), read_only=True)
    counts = dict(con.execute("SELECT stage, count(*) FROM decisions WHERE run_id = ? GROUP BY stage", [data["run_id"]]).fetchall())
    con.close()
    assert set(counts) == {"task_analysis", "scope", "precision"} and counts["scope"] >= 3
    shown = runner.invoke(app, ["runs", "show", data["run_id"][:12]])
    assert shown.exit_code == 0 and "precision (rules)" in shown.output
    marked = runner.invoke(app, ["runs", "mark", data["run_id"], "--failure"])
    assert marked.exit_code == 0 and get_run(None, data["run_id"]).verdict == "failure"


def test_a_stale_index_is_brought_forward_and_dirty_work_is_left_out(indexed: DecompRepo) -> None:
    target = indexed.path / "src" / "extra_clock.c"
    target.write_text('#include "global.h"\n\nvoid ShowExtraClockFace(void)\n{\n}\n')
    subprocess.run(["git", "add", "-A"], cwd=indexed.path, check=True)
    subprocess.run(["git", "commit", "-qm", "Add extra clock face"], cwd=indexed.path, check=True)
    (indexed.path / "README.md").write_text("uncommitted\n")
    run = TaskRun("Document ShowExtraClockFace", indexed.path, config=load_config(indexed.path),
                  options=RunOptions(retrieval_only=True))
    outcome = drive(run)
    assert any("index updated first" in note for note in outcome.notes)
    assert any("1 uncommitted file(s) are not included" in note for note in outcome.notes)
    assert outcome.results["task_analysis"].output.symbols == ["ShowExtraClockFace"]
    assert [v.path for v in outcome.results["scope"].output.files if v.label == "relevant"] == ["src/extra_clock.c"]


@pytest.mark.parametrize(("task", "options", "needle"), [
    ("   ", {}, "the task is empty"),
    ("x" * 5000, {}, "keep it under"),
    ("Document it", {"until": "scoping"}, "unknown stage"),
    ("Document it", {"retrieval_only": True, "until": "plan"}, "cannot go on to plan"),
])
def test_bad_run_requests_are_refused_before_anything_is_logged(indexed: DecompRepo, task: str, options: dict, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        TaskRun(task, indexed.path, config=load_config(indexed.path), options=RunOptions(**options))
    assert list_runs(None) == []


def test_two_runs_at_once_on_one_project_both_finish(indexed: DecompRepo) -> None:
    env_cmd = ["run", "Document InitWallClock", "--repo", str(indexed.path), "--retrieval-only", "--no-prefect", "--json"]
    import os
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "agent.cli", *env_cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1][-500:] for r in results]
    ids = {json.loads(out)["run_id"] for out, _ in results}
    assert len(ids) == 2
    assert {r.status for r in list_runs(None)} == {"succeeded"}


def test_an_unindexed_repo_is_indexed_first(decomp_repo: DecompRepo) -> None:
    outcome = drive(TaskRun(f"Rename {OLD} to {NEW}", decomp_repo.path, config=load_config(decomp_repo.path),
                            options=RunOptions(retrieval_only=True)))
    assert any("index built first" in note for note in outcome.notes)
    assert outcome.results["task_analysis"].output.symbols == [OLD]


def _run_branches(repo: DecompRepo) -> list[str]:
    """The run branches in the fixture's repository."""
    out = subprocess.run(["git", "-C", str(repo.path), "branch", "--list", "cra/*", "--format=%(refname:short)"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_a_run_that_fails_or_errs_leaves_no_branch(tmp_path: Path, indexed: DecompRepo) -> None:
    wrong = {"edits": [{"path": WALLCLOCK, "search": "no such text", "replace": "x"}]}
    failed, _ = run_with(tmp_path, indexed, f"Rename {OLD} to {NEW}", answers_for("rename", True, []) | {"CodeEdits": wrong})
    assert failed.status == "failed" and failed.branch is None and _run_branches(indexed) == []
    (tmp_path / "cra.toml").write_text('[models]\nmax_retries = 0\n[models.reasoning]\nbase = "tiny"\n'
                                       'endpoint = "http://127.0.0.1:9/v1"\n[models.coding]\nbase = "tiny"\n'
                                       'endpoint = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(CraError):
        drive(TaskRun(f"Rename {OLD} to {NEW}", indexed.path, config=load_config(tmp_path), options=RunOptions()))
    assert [r.status for r in list_runs(None)] == ["error", "failed"] and _run_branches(indexed) == []
    worktrees = subprocess.run(["git", "-C", str(indexed.path), "worktree", "list"], capture_output=True, text=True,
                               check=True).stdout
    assert len(worktrees.splitlines()) == 1  # the checkout's own only


def test_a_killed_run_is_recorded_as_killed(tmp_path: Path, indexed: DecompRepo) -> None:
    import os
    import signal
    import sys
    import time

    text = (indexed.path / WALLCLOCK).read_text()
    answers = answers_for("rename", True, rename_edits(text, OLD, NEW))
    with standin_server(scripted(answers)) as server:
        (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           f'[models.coding]\nbase = "tiny"\nendpoint = "{server.url}"\n'
                                           '[validation]\nbuild = ["sleep", "120"]\ntimeout_s = 300\n')
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", f"Rename {OLD} to {NEW}", "--repo",
                                 str(indexed.path), "--config", str(tmp_path / "cra.toml"), "--no-prefect"],
                                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait until the run is in its (endless) build check
            runs = list_runs(None)
            if runs and any(s["stage"] == "code" for s in get_run(None, runs[0].id).stages):
                break
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(_run_branches(indexed)) == 1  # the kill left its branch and worktree...
    (run,) = list_runs(None)
    assert (run.status, run.success) == ("killed", False)
    assert [s["stage"] for s in get_run(None, run.id).stages] == list(STAGE_NAMES)  # what it did is still there
    assert _run_branches(indexed) == []  # ...and the reaper removed them
    assert not (project_paths(indexed.path).root / "runs" / run.id / "worktree").exists()


@pytest.mark.real_repo
def test_real_pokeemerald_wallclock_window_task() -> None:
    """On a real pokeemerald checkout (CRA_POKEEMERALD): the issue's retrieval-only example."""
    import os

    checkout = os.environ.get("CRA_POKEEMERALD")
    if not checkout:
        pytest.skip("set CRA_POKEEMERALD to a pokeemerald clone to run this")
    repo = Path(checkout)
    status = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True).stdout
    outcome = drive(TaskRun("Use window constants in wallclock", repo, config=load_config(repo),
                            options=RunOptions(retrieval_only=True, until="precision")))
    relevant = [v.path for v in outcome.results["scope"].output.files if v.label == "relevant"]
    primary = [(v.path, v.name) for v in outcome.results["precision"].output.symbols if v.tier == "primary"]
    assert relevant == ["src/wallclock.c"]
    assert primary and all(path == "src/wallclock.c" for path, _ in primary)
    assert any("Window" in name for _, name in primary)
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout == status


def test_a_prefect_run_without_a_model_server_says_so_in_one_line(tmp_path: Path, indexed: DecompRepo) -> None:
    import os
    import sys

    (tmp_path / "cra.toml").write_text('[models]\nmax_retries = 0\n[models.reasoning]\nbase = "tiny"\n'
                                       'endpoint = "http://127.0.0.1:9/v1"\n')
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "PREFECT_HOME": str(tmp_path / "p"),
           "COLUMNS": "200"}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-m", "agent.cli", "run", f"Document {OLD}", "--repo", str(indexed.path),
                           "--config", str(tmp_path / "cra.toml")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode != 0 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        "error: the reasoning model server at http://127.0.0.1:9/v1 failed 1 times (APIConnectionError: Connection "
        "error.); start it with `cra serve --role reasoning` or fix [models.reasoning] endpoint"]
