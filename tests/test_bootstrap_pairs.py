"""Training pairs derived from the fixture decomp's commits, and the datasets they are stored and exported as."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from agent.cli import app
from agent.config import load_config
from agent.errors import InvalidInput
from agent.index.build import index_repo
from agent.stages import PIPELINE, STAGE_NAMES
from agent.stages.base import Decision, Prompt, Stage, StageContext, StageRecipe, system
from agent.stages.code import EditBlock
from agent.stages.gold import CommitGold, Lesson
from agent.stages.task_analysis import TaskInput
from bootstrap.derive import derive_pairs, parse_hunks, reapply_problem
from bootstrap.mining import MinedCommit
from bootstrap.pairs import StoredSplit, bootstrap_repo, eval_commits
from curation.datasets import Example, add_examples, export, import_file, load_examples, model_family, summary
from tests.fixtures.decomp import DecompRepo


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def at_parent(repo: DecompRepo, subject: str, home: Path) -> tuple[str, str, list[str]]:
    """Check the fixture out at the parent of the commit with `subject`, indexed; return sha, parent and files."""
    sha = repo.sha(subject)
    parent = git(repo.path, "rev-parse", f"{sha}^").strip()
    files = git(repo.path, "diff", "--name-only", parent, sha).split()
    git(repo.path, "checkout", "-q", "--detach", parent)
    index_repo(repo.path, home=home, embed=False)
    return sha, parent, files


def derive_head(repo: DecompRepo, home: Path, description: str, files: list[str]) -> tuple[list, dict]:
    """The pairs for the fixture's newest commit, derived with the checkout and its index at the parent."""
    sha, parent = git(repo.path, "rev-parse", "HEAD").strip(), git(repo.path, "rev-parse", "HEAD^").strip()
    git(repo.path, "checkout", "-q", "--detach", parent)
    index_repo(repo.path, home=home, embed=False)
    return derive_pairs(repo.path, home, sha=sha, parent=parent, description=description, files=files, repo=repo.path)


def test_rename_commit_gives_a_pair_per_stage_with_labels_from_the_diff(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    subject = "Rename sub_80A1234 to InitWallClock"
    sha, parent, files = at_parent(decomp_repo, subject, tmp_path / "home")
    pairs, facts = derive_pairs(decomp_repo.path, tmp_path / "home", sha=sha, parent=parent, description=subject,
                                files=files, repo=decomp_repo.path)
    by_stage = {p.stage: p for p in pairs}
    assert list(by_stage) == list(STAGE_NAMES) and facts["code_exact"]
    analysis = by_stage["task_analysis"].output
    assert (analysis.kind, analysis.keep_rom) == ("rename", True) and "sub_80A1234" in analysis.symbols
    assert subject in by_stage["task_analysis"].messages[-1]["content"]
    relevant = {v.path for v in by_stage["scope"].output.files if v.label == "relevant"}
    assert relevant == set(files) & {c.path for c in by_stage["scope"].output.files}
    primary = {(v.path, v.name) for v in by_stage["precision"].output.symbols if v.tier == "primary"}
    assert ("src/wallclock.c", "sub_80A1234") in primary
    assert [s.file for s in by_stage["plan"].output.steps][0] == "include/wallclock.h"  # declarations first
    edits = by_stage["code"].output.edits
    assert all("sub_80A1234" in e.search and "InitWallClock" in e.replace for e in edits)
    # the code pair's prompt shows the pre-commit code the edits apply to
    assert "sub_80A1234" in by_stage["code"].messages[-1]["content"]


class Recap(BaseModel):
    """The stages that taught before this one."""

    stages: list[str]


class RecapStage(Stage[TaskInput, Recap]):
    """A stage added at the end of the pipeline, with nothing but its module."""

    name = "recap"
    Input = TaskInput
    Output = Recap
    role = "reasoning"
    recipe = StageRecipe(rank=8)

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> TaskInput:
        return TaskInput(task=ctx.task)

    def prompt(self, ctx: StageContext, inp: TaskInput) -> Prompt:
        return Prompt([system("recapper"), {"role": "user", "content": inp.task}])

    def decisions(self, inp: TaskInput, out: Recap) -> list[Decision]:
        return []

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        return Lesson(Recap(stages=list(earlier)), self.prompt(ctx, self.build_input(ctx, {})).messages,
                      facts={"recap_primary": len(gold.primary)})

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        return {"same": float(gold == predicted)}


def test_each_stage_of_the_pipeline_teaches_its_own_pair(decomp_repo: DecompRepo, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    subject = "Rename sub_80A1234 to InitWallClock"
    sha, parent, files = at_parent(decomp_repo, subject, tmp_path / "home")
    pairs, _ = derive_pairs(decomp_repo.path, tmp_path / "home", sha=sha, parent=parent, description=subject,
                            files=files, repo=decomp_repo.path)
    assert [p.stage for p in pairs] == [stage.name for stage in PIPELINE]  # one pair each, in pipeline order
    # a stage added to the pipeline is asked for its pair, after the lessons of every stage before it
    monkeypatch.setattr("bootstrap.derive.PIPELINE", (*PIPELINE, RecapStage()))
    pairs, facts = derive_pairs(decomp_repo.path, tmp_path / "home", sha=sha, parent=parent, description=subject,
                                files=files, repo=decomp_repo.path)
    assert [p.stage for p in pairs] == [*STAGE_NAMES, "recap"] and facts["code_exact"] and facts["recap_primary"] > 0
    assert pairs[-1].output.stages == list(STAGE_NAMES) and pairs[-1].messages[-1]["content"] == subject


def test_documentation_by_comments_only_is_documentation(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    subject = "Document field effect tasks"
    sha, parent, files = at_parent(decomp_repo, subject, tmp_path / "home")
    pairs, facts = derive_pairs(decomp_repo.path, tmp_path / "home", sha=sha, parent=parent, description=subject,
                                files=files, repo=decomp_repo.path)
    assert facts["kind"] == "documentation" and pairs[0].output.keep_rom


def test_deleting_commit_has_no_code_pair(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    subject = "Remove leftover battle anim asm"
    sha, parent, files = at_parent(decomp_repo, subject, tmp_path / "home")
    pairs, facts = derive_pairs(decomp_repo.path, tmp_path / "home", sha=sha, parent=parent, description=subject,
                                files=files, repo=decomp_repo.path)
    assert "code" not in {p.stage for p in pairs} and "deletes or renames" in facts["code_skipped"]


def test_parse_hunks_reads_both_sides() -> None:
    patch = ("diff --git a/src/a.c b/src/a.c\n--- a/src/a.c\n+++ b/src/a.c\n@@ -3,3 +3,3 @@ void f(void)\n"
             " {\n-    x = 1;\n+    x = 2;\n }\n")
    (hunk,) = parse_hunks(patch)
    assert (hunk.path, hunk.old_start, hunk.old_changed) == ("src/a.c", 3, (4, 4))
    assert hunk.old_text == ["{", "    x = 1;", "}"] and hunk.new_text == ["{", "    x = 2;", "}"]


def example(i: int, stage: str = "scope", split: str = "train") -> Example:
    return Example(stage, "synthetic", "qwen3", [{"role": "system", "content": "s"}, {"role": "user", "content": f"task {i}"}],
                   {"files": [{"path": "src/a.c", "label": "relevant", "reason": str(i)}]}, split, "/repo", f"{i:040x}")


def test_examples_are_stored_once_summarised_and_exported_for_trl(tmp_path: Path) -> None:
    assert add_examples(None, [example(1), example(2), example(3, split="eval")]) == 3
    assert add_examples(None, [example(1), example(2)]) == 0  # idempotent
    counts = {(r["stage"], r["split"]): r["examples"] for r in summary(None)}
    assert counts == {("scope", "train"): 2, ("scope", "eval"): 1}
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"scope.{fmt}"
        assert export(None, out, stage="scope", fmt=fmt) == 2
        from datasets import load_dataset

        rows = load_dataset("json" if fmt == "jsonl" else "parquet", data_files=str(out), split="train")
        assert rows[0]["messages"][-1]["role"] == "assistant"
        assert json.loads(rows[0]["messages"][-1]["content"])["files"][0]["path"] == "src/a.c"
    with pytest.raises(InvalidInput, match="no train examples for plan"):
        export(None, tmp_path / "plan.jsonl", stage="plan", fmt="jsonl")
    assert not (tmp_path / "plan.jsonl").exists()


def test_import_cold_start_pairs(tmp_path: Path) -> None:
    source = tmp_path / "commitpack.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Fix bug {i}"},
                          {"role": "assistant", "content": json.dumps({"edits": []})}]} for i in range(3)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert import_file(None, source, stage="code", source="commitpackft", family="qwen2.5-coder") == (3, 3)
    assert {e.source for e in load_examples(None, stage="code")} == {"imported:commitpackft"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "no answer"}]}\n')
    with pytest.raises(InvalidInput, match="line 1"):
        import_file(None, bad, stage="code", source="x", family="qwen2.5-coder")
    # the line of the file, blank lines counted: an editor's line number
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(json.dumps(rows[0]) + "\n\n\n" + json.dumps(rows[1]) + "\n" + '{"messages": [}\n')
    with pytest.raises(InvalidInput, match=r"spaced.jsonl line 5 is not JSON"):
        import_file(None, spaced, stage="code", source="x", family="qwen2.5-coder")
    shapeless = tmp_path / "shapeless.jsonl"
    shapeless.write_text(json.dumps(rows[0]) + "\n\n" + '{"messages": "text"}\n')
    with pytest.raises(InvalidInput, match=r"shapeless.jsonl line 3: needs `messages`"):
        import_file(None, shapeless, stage="code", source="x", family="qwen2.5-coder")
    assert len(load_examples(None, stage="code")) == 3  # nothing more imported


def test_model_families() -> None:
    assert model_family("Qwen/Qwen3-4B") == "qwen3"
    assert model_family("Qwen/Qwen2.5-Coder-3B-Instruct") == "qwen2.5-coder"
    assert load_config(Path("/nonexistent")).models.reasoning.base == "Qwen/Qwen3-4B"


def test_a_hunk_too_long_for_an_edit_block_gives_no_code_pair(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    path = decomp_repo.path / "src" / "wallclock.c"
    path.write_text(path.read_text() + "\n// " + "x" * 4200 + "\n")
    git(decomp_repo.path, "commit", "-qam", "Document the wall clock at length")
    pairs, facts = derive_head(decomp_repo, tmp_path / "home", "Document the wall clock at length", ["src/wallclock.c"])
    assert "code" not in {p.stage for p in pairs} and "longer than an edit block" in facts["code_skipped"]
    assert {p.stage for p in pairs} == {"task_analysis", "scope", "precision", "plan"}


def test_why_a_code_pair_was_not_made_is_recorded_per_commit(decomp_repo: DecompRepo) -> None:
    path = decomp_repo.path / "src" / "wallclock_vars.c"
    filler = "".join(f"// {'-' * 200}\n" for _ in range(20))  # too far apart to join into one block
    path.write_text("".join(f"EWRAM_DATA u8 gUnknown_0203{i:04X} = 0;\n" + filler for i in range(13)))
    git(decomp_repo.path, "add", "-A")
    git(decomp_repo.path, "commit", "-qm", "Add the wall clock variables")
    path.write_text(path.read_text().replace("gUnknown_0203", "sWallClockVar_"))
    git(decomp_repo.path, "commit", "-qam", "Rename the wall clock variables")
    report = bootstrap_repo(decomp_repo.path, config=load_config(decomp_repo.path), last=1)
    assert report.derive.derived == 1 and report.derive.code_tried == 1 and report.derive.code_exact == 0
    assert report.derive.code_failed == {"too many blocks": 1} and "code" not in report.derive.pairs
    shown = CliRunner().invoke(app, ["datasets", "commits", "--repo", str(decomp_repo.path), "--code-failed", "--json"])
    assert shown.exit_code == 0, shown.output
    [row] = json.loads(shown.output)
    assert row["commit"] == git(decomp_repo.path, "rev-parse", "HEAD").strip()
    assert row["status"] == "derived" and row["code_failed"].startswith("13 edit blocks (neighbours too far apart to join)")
    bad = CliRunner().invoke(app, ["datasets", "commits", "--status", "done"])
    assert bad.exit_code != 0 and "derived or skipped" in bad.output


def test_reapply_problem_names_blocks_that_miss_or_give_other_bytes(decomp_repo: DecompRepo) -> None:
    sha = decomp_repo.sha("Rename sub_80A1234 to InitWallClock")
    git(decomp_repo.path, "checkout", "-q", "--detach", f"{sha}^")
    files = ["src/wallclock.c"]
    before = (decomp_repo.path / files[0]).read_bytes()
    missing = [EditBlock(path=files[0], search="void NoSuchFunction(void)", replace="void F(void)")]
    kind, detail = reapply_problem(decomp_repo.path, decomp_repo.path, sha, missing, files)
    assert kind == "edits do not apply" and "NoSuchFunction" in detail
    other = [EditBlock(path=files[0], search="void sub_80A1234(void)\n{", replace="void InitClock(void)\n{")]
    assert reapply_problem(decomp_repo.path, decomp_repo.path, sha, other, files) == (
        "result differs", "the edits apply but src/wallclock.c differs from the commit's")
    assert (decomp_repo.path / files[0]).read_bytes() == before  # the worktree is restored either way


def test_the_newest_commits_are_held_out_across_passes() -> None:
    commits = [MinedCommit(f"{i:040x}", "0" * 40, f"2020-01-{i + 1:02d}T12:00:00+02:00", "a", "s", "s", "", None, [], 1)
               for i in range(30)]
    newest = {c.sha for c in commits[27:]}
    assert eval_commits(commits) == newest  # the newest tenth
    resumed = eval_commits(commits[25:], stored=StoredSplit(done=25, held=0, newest=datetime(2020, 1, 25, 10)))
    assert resumed == newest  # a run cut short after 25 commits holds out what the whole run would have
    refresh = [MinedCommit(f"{i:040x}", "0" * 40, f"2020-02-{i - 29:02d}T12:00:00Z", "a", "s", "s", "", None, [], 1)
               for i in range(30, 50)]
    assert eval_commits(refresh, stored=StoredSplit(done=30, held=3, newest=datetime(2020, 1, 30, 10))) == {
        c.sha for c in refresh[-2:]}  # 20 new commits: 2 more held out, 18 trained on
    filling_in = eval_commits(commits[:15], stored=StoredSplit(done=15, held=2, newest=datetime(2020, 1, 30, 10)))
    assert filling_in == set()  # older history added after a `--last N` pass is all trained on


def test_more_hunks_than_a_code_answer_holds_are_joined_into_blocks(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    path = decomp_repo.path / "src" / "wallclock_vars.c"
    path.write_text("".join(f"EWRAM_DATA u8 gUnknown_0203{i:04X} = 0;\n" + "\n" * (9 + i % 3) for i in range(14)))
    git(decomp_repo.path, "add", "-A")
    git(decomp_repo.path, "commit", "-qm", "Add the wall clock variables")
    path.write_text(path.read_text().replace("gUnknown_0203", "sWallClockVar_"))
    git(decomp_repo.path, "commit", "-qam", "Rename the wall clock variables")
    pairs, facts = derive_head(decomp_repo, tmp_path / "home", "Rename the wall clock variables", ["src/wallclock_vars.c"])
    assert facts["hunks"] == 14 and facts["code_exact"] and "code_failed" not in facts
    edits = {p.stage: p for p in pairs}["code"].output.edits
    assert len(edits) == 12 and sum(e.search.count("gUnknown_0203") for e in edits) == 14


@pytest.mark.parametrize("old_end, new_end", [("", "\n"), ("\n", "")])
def test_a_file_ending_without_a_newline_on_one_side_is_reproduced(decomp_repo: DecompRepo, tmp_path: Path,
                                                                   old_end: str, new_end: str) -> None:
    path = decomp_repo.path / "src" / "battle_vcount.c"
    path.write_text("void sub_800FCD4(void)\n{\n    REG_BG0CNT = 0x9800;\n}" + old_end)
    git(decomp_repo.path, "add", "-A")
    git(decomp_repo.path, "commit", "-qm", "Add the battle vcount handler")
    path.write_text("void sub_800FCD4(void)\n{\n    REG_BG0CNT = 0x9800;\n}\n\nvoid sub_800FCFC(void)\n{\n    Random();\n}" + new_end)
    git(decomp_repo.path, "commit", "-qam", "Decompile the battle vblank callback")
    pairs, facts = derive_head(decomp_repo, tmp_path / "home", "Decompile the battle vblank callback", ["src/battle_vcount.c"])
    assert facts["code_exact"] and "code_failed" not in facts, facts
    [edit] = {p.stage: p for p in pairs}["code"].output.edits
    assert edit.search.endswith("}" + old_end) and edit.replace.endswith("}" + new_end)


def test_a_block_in_duplicated_code_grows_until_its_search_is_unique(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    body = "".join(f"    gTasks[taskId].data[{i}] = 0;\n" for i in range(25))
    path = decomp_repo.path / "src" / "trade_tasks.c"
    path.write_text(f"void sub_804C164(u8 taskId)\n{{\n{body}}}\n\nvoid sub_804C1A8(u8 taskId)\n{{\n{body}}}\n")
    git(decomp_repo.path, "add", "-A")
    git(decomp_repo.path, "commit", "-qm", "Add the trade tasks")
    text = path.read_text()
    cut = text.index("void sub_804C1A8")
    path.write_text(text[:cut] + text[cut:].replace("data[20] = 0;", "data[20] = 1;"))
    git(decomp_repo.path, "commit", "-qam", "Fix the second trade task's counter")
    pairs, facts = derive_head(decomp_repo, tmp_path / "home", "Fix the second trade task's counter", ["src/trade_tasks.c"])
    assert facts["code_exact"], facts
    [edit] = {p.stage: p for p in pairs}["code"].output.edits
    assert edit.search.startswith("void sub_804C1A8") and edit.search.count("\n") > 20  # 12 lines would not do


def test_bootstrapping_can_validate_each_code_pair_with_the_runs_build(decomp_repo, tmp_path: Path) -> None:
    from agent.config import ledger_path
    from tests.fixtures.decomp import host_build_missing

    if reason := host_build_missing():
        pytest.skip(reason)
    (tmp_path / "cra.toml").write_text("[validation]\ncarry = []\nin_bootstrap = true\n")
    report = bootstrap_repo(decomp_repo.path, config=load_config(decomp_repo.path, path=tmp_path / "cra.toml"), last=3)
    import duckdb

    con = duckdb.connect(str(ledger_path()), read_only=True)
    facts = [json.loads(f) for (f,) in con.execute("SELECT facts FROM bootstrap_commits").fetchall()]
    con.close()
    checked = [f for f in facts if "validated" in f]
    assert checked and all(f["validated"] for f in checked) and report.derive.code_failed == {}
    # a build that cannot succeed drops the code pairs, saying why, and keeps the other stages' pairs
    (tmp_path / "broken.toml").write_text('[validation]\ncarry = []\nin_bootstrap = true\nbuild = ["false"]\n'
                                         'compare = ["false"]\n')
    broken = bootstrap_repo(decomp_repo.path, config=load_config(decomp_repo.path, path=tmp_path / "broken.toml"),
                            home=tmp_path / "other-home", last=3)
    assert broken.derive.code_failed.get("fails validation") == len(checked)
    assert "code" not in broken.derive.pairs and broken.derive.pairs.get("scope")
