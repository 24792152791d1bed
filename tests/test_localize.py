"""The localization benchmark: task selection, gold functions, metrics, and a run that leaves the checkout alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import localization as tasks_of
from agent.errors import InvalidInput
from agent.eval import localize as L
from agent.index.history import CommitRecord, FileChange
from agent.localization import Hunk
from tests.test_history import GitRepo, c_file


def _rec(subject: str, files: list[tuple[str, str, int, int]], parents: int = 1, author: str = "dev") -> CommitRecord:
    return CommitRecord("f" * 40, ["a" * 40, "b" * 40][:parents], T, author, subject, "",
                        [FileChange(p, s, a, d) for p, s, a, d in files])


T = 1_700_000_000


# ---------------------------------------------------------------------------------------------------------
# Selection rules


@pytest.mark.parametrize("subject", [
    "Merge branch 'master' into docs", "Merge pull request #5 from a/b", 'Revert "Fix the clock"',
    "Review changes", "Apply suggestions from code review", "Automated update of data", "formatting",
    "Update field.c", "wip", "Fix typo",
])
def test_automated_or_short_subjects_are_not_tasks(subject: str) -> None:
    assert tasks_of.subject_reason(subject) is not None


@pytest.mark.parametrize("subject", [
    "Fix CaveTransition pals", 'Standardize spelling of "paralyze"', "Merge two battle structs",
    "Revert MB name changes", "Fix typo in sMoveRelearnerMenuState (#2155)", "format base_stats.h properly",
])
def test_real_descriptions_are_tasks(subject: str) -> None:
    assert tasks_of.subject_reason(subject) is None


def test_bot_authors_are_automated() -> None:
    assert tasks_of.subject_reason("Update the data tables now", "dependabot[bot]") is not None


def test_drop_reasons() -> None:
    ok = [("src/a.c", "M", 3, 1), ("include/a.h", "M", 1, 0), ("graphics/a.png", "A", None, None)]
    assert tasks_of.drop_reason(_rec("Fix the palette fade", ok)) is None
    assert tasks_of.drop_reason(_rec("Fix the palette fade", ok, parents=2)) == "merge commit"
    assert tasks_of.drop_reason(_rec("Fix the palette fade", ok, parents=0)) == "root commit"
    assert tasks_of.drop_reason(_rec("Fix the palette fade", [("README.md", "M", 1, 1)])) == "modifies no existing .c/.h file"
    assert tasks_of.drop_reason(_rec("Fix the palette fade", ok + [("src/b.c", "A", 10, 0)])) == (
        "adds, deletes or renames .c/.h files")
    assert tasks_of.drop_reason(_rec("Fix the palette fade", [("src/a.c", "M", 1, 1), ("src/b.c", "D", 0, 9)])) == (
        "adds, deletes or renames .c/.h files")
    many = [(f"src/f{i}.c", "M", 1, 1) for i in range(6)]
    assert tasks_of.drop_reason(_rec("Fix the palette fade", many)) == "more than 5 .c/.h files"
    assert tasks_of.drop_reason(_rec("Fix the palette fade", [("src/a.c", "M", 100, 50), ("data/x.json", "M", 50, 0)])) == (
        "200+ changed lines")
    assert tasks_of.drop_reason(_rec("Fix the palette fade", [("src/a.c", "M", 100, 99)])) is None
    # Commits the user names skip the subject and size rules, not the need for an existing .c/.h file.
    assert tasks_of.drop_reason(_rec("wip", many, parents=1), chosen=True) is None
    assert tasks_of.drop_reason(_rec("wip", [("src/new.c", "A", 5, 0)]), chosen=True) == "modifies no existing .c/.h file"


def test_the_ranker_fit_reads_past_commits_larger_than_tasks() -> None:
    """A fit learns from commits of up to 10 files and 1,000 lines; the tasks it is scored on stay small."""
    from bootstrap.ranking import PAST_COMMIT_LIMITS

    seven = [(f"src/f{i}.c", "M", 40, 40) for i in range(7)]
    assert tasks_of.drop_reason(_rec("Rename the palette fade buffers", seven)) == "more than 5 .c/.h files"
    assert tasks_of.drop_reason(_rec("Rename the palette fade buffers", seven), limits=PAST_COMMIT_LIMITS) is None
    eleven = [(f"src/f{i}.c", "M", 1, 1) for i in range(11)]
    assert tasks_of.drop_reason(_rec("Rename the palette fade buffers", eleven), limits=PAST_COMMIT_LIMITS) == (
        "more than 10 .c/.h files")


# ---------------------------------------------------------------------------------------------------------
# Gold functions from hunks


def test_parse_old_hunks() -> None:
    patch = (
        "diff --git a/src/a.c b/src/a.c\n--- a/src/a.c\n+++ b/src/a.c\n"
        "@@ -3 +3 @@ void A(void)\n-x\n+y\n@@ -10,0 +11,2 @@\n+z\n+w\n@@ -20,4 +22,0 @@\n-q\n"
        "diff --git a/src/new.c b/src/new.c\n--- /dev/null\n+++ b/src/new.c\n@@ -0,0 +1 @@\n+n\n"
    )
    assert tasks_of.parse_old_hunks(patch) == [Hunk("src/a.c", 3, 1), Hunk("src/a.c", 10, 0), Hunk("src/a.c", 20, 4)]


def test_touched_functions_maps_old_side_ranges_onto_spans() -> None:
    spans = {"src/a.c": [("A", 1, 4), ("B", 6, 12), ("C", 14, 20)]}
    assert tasks_of.touched_functions([Hunk("src/a.c", 3, 1)], spans) == ["A"]
    assert tasks_of.touched_functions([Hunk("src/a.c", 4, 3)], spans) == ["A", "B"]  # spans the gap into B
    assert tasks_of.touched_functions([Hunk("src/a.c", 5, 1)], spans) == []  # the blank line between
    assert tasks_of.touched_functions([Hunk("src/a.c", 8, 0)], spans) == ["B"]  # inserted inside B
    assert tasks_of.touched_functions([Hunk("src/a.c", 12, 0)], spans) == []  # inserted after B's closing brace
    assert tasks_of.touched_functions([Hunk("src/b.c", 3, 1)], spans) == []


# ---------------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_on_hand_made_rankings() -> None:
    ranked = ["x.c", "a.c", "y.c", "z.c", "b.h", "w.c"]
    assert L.first_gold_rank(ranked, ["a.c", "b.h"]) == 2
    assert L.first_gold_rank(ranked, ["q.c"]) is None
    assert L.all_in_top(ranked, ["a.c", "b.h"], 5) and not L.all_in_top(ranked, ["a.c", "b.h"], 4)
    assert not L.all_in_top(ranked, [], 5)
    assert L.recall_at(ranked, ["a.c", "w.c"], 5) == 0.5
    assert L.reciprocal_rank(ranked, ["y.c"]) == pytest.approx(1 / 3)
    assert L.reciprocal_rank(ranked, ["q.c"]) == 0.0


def test_rrf_sums_reciprocal_ranks() -> None:
    fused = L.rrf([["a", "b", "c"], ["b", "c", "d"]], k=60)
    assert [p for p, _ in fused] == ["b", "c", "a", "d"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)


def test_summarize() -> None:
    rows = [
        {"files": ["a.c", "b.c"], "gold_files": ["a.c"], "symbols": ["f", "g"], "gold_functions": ["g"]},
        {"files": ["x.c", "y.c", "b.h"], "gold_files": ["b.h", "q.c"], "symbols": ["h"], "gold_functions": []},
    ]
    s = L.summarize(rows)
    assert s["tasks"] == 2
    assert s["file_acc@1"] == 0.5 and s["file_acc@5"] == 0.5 and s["file_acc@10"] == 0.5
    assert s["recall@5"] == 0.75
    assert s["mrr"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-4)
    assert s["function_acc@5"] == 1.0 and s["function_tasks"] == 1
    assert L.summarize([{**rows[0], "symbols": None}])["function_acc@5"] is None


# ---------------------------------------------------------------------------------------------------------
# Selection on a real repository


@pytest.fixture
def small(tmp_path: Path) -> GitRepo:
    """A history with every kind of commit the selection must tell apart."""
    r = GitRepo(tmp_path / "small")
    r.commit("Initial commit", {"src/clock.c": c_file("InitClock", "TickClock", "DrawClock"),
                                "include/clock.h": "void InitClock(void);\n", "src/menu.c": c_file("OpenMenu"),
                                "README.md": "hi\n"})
    r.commit("Speed up the clock ticks", {"src/clock.c": c_file("InitClock", "TickClockFast", "DrawClock")})
    r.commit("Add a brand new file", {"src/new.c": c_file("New"), "src/menu.c": c_file("OpenMenu", "Close")})
    r.commit("Review changes", {"src/menu.c": c_file("OpenMenu", "CloseMenu")})
    r.commit("Update the readme text", {"README.md": "hello\n"})
    r.commit("Rewrite the whole menu", {"src/menu.c": c_file(*[f"Menu{i}" for i in range(60)])})
    r.commit("Draw the clock face (#7)", {"src/clock.c": c_file("InitClock", "TickClockFast", "DrawClockFace"),
                                         "include/clock.h": "void InitClock(void);\nvoid DrawClockFace(void);\n"})
    return r


def test_select_last_keeps_the_newest_valid_tasks(small: GitRepo) -> None:
    stats: dict = {}
    tasks = tasks_of.select_tasks(small.root, last=5, stats=stats)
    assert [t.query for t in tasks] == ["Draw the clock face", "Speed up the clock ticks"]
    assert tasks[0].files == ("include/clock.h", "src/clock.c")
    assert stats["scanned"] == 7 and stats["kept"] == 2
    assert stats["dropped"] == {
        "200+ changed lines": 1, "modifies no existing .c/.h file": 1, "automated or trivial subject": 1,
        "adds, deletes or renames .c/.h files": 1, "root commit": 1,
    }
    assert tasks_of.select_tasks(small.root, last=1) == tasks[:1]


def test_hunks_give_the_gold_functions(small: GitRepo) -> None:
    task = tasks_of.select_tasks(small.root, last=1)[0]
    spans = {"src/clock.c": [("src/clock.c::function::InitClock", 1, 4), ("src/clock.c::function::TickClockFast", 5, 8),
                             ("src/clock.c::function::DrawClock", 9, 12)]}
    assert tasks_of.touched_functions(task.hunks, spans) == ["src/clock.c::function::DrawClock"]
    assert {h.path for h in task.hunks} == {"src/clock.c", "include/clock.h"}


def test_select_from_a_commits_file(small: GitRepo, tmp_path: Path) -> None:
    review = small.git("rev-parse", "HEAD~3")
    listed = tmp_path / "shas.txt"
    listed.write_text(f"# chosen by hand\n{review[:10]}\ndeadbeef\n\n{small.git('rev-parse', 'HEAD')}\n")
    stats: dict = {}
    tasks = tasks_of.select_tasks(small.root, commits_file=listed, stats=stats)
    assert [t.query for t in tasks] == ["Draw the clock face", "Review changes"]
    assert stats["dropped"] == {"not a commit of this repository": 1}
    with pytest.raises(InvalidInput):
        tasks_of.select_tasks(small.root)
    with pytest.raises(InvalidInput):
        tasks_of.select_tasks(small.root, last=3, commits_file=listed)
    with pytest.raises(InvalidInput):
        tasks_of.select_tasks(small.root, commits_file=tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------------------
# Runs: each task at its parent, the user's checkout untouched


def _checkout_state(root: Path) -> tuple[str, str, str, str]:
    git = GitRepo.__new__(GitRepo)
    git.root, git.clock = root, T
    return (git.git("rev-parse", "HEAD"), git.git("status", "--porcelain", "--untracked-files=all"),
            git.git("worktree", "list", "--porcelain"), git.git("branch", "--list"))


def test_run_scores_every_ranker_at_each_parent_and_leaves_the_checkout_alone(decomp_repo, monkeypatch) -> None:
    root = decomp_repo.path
    (root / "notes.txt").write_text("an untracked file of the user\n")
    before = _checkout_state(root)
    tasks = tasks_of.select_tasks(root, last=3)
    heads: list[str] = []
    real_update = tasks_of.history.update_history

    def spy(con, repo, head):
        heads.append(head)
        return real_update(con, repo, head)

    monkeypatch.setattr(tasks_of.history, "update_history", spy)
    progress: list[str] = []
    rankers = [r for r in L.RANKERS if r != "learned"]  # too short a history to fit one: tests/test_ranker.py fits it
    report = L.run_localize(root, tasks, rankers, on_progress=progress.append, selection={"kept": 3})
    assert _checkout_state(root) == before
    assert heads == [t.parent for t in sorted(tasks, key=lambda t: t.committed_at)]  # linear history: same order
    assert progress and report["selection"] == {"kept": 3}
    assert report["skipped"]["count"] == 0 and len(report["tasks"]) == 3
    for name in rankers:
        summary = report["summary"][name]
        assert summary["tasks"] == 3
        assert 0.0 <= summary["file_acc@5"] <= 1.0 and 0.0 <= summary["mrr"] <= 1.0
    assert report["summary"]["bm25"]["function_acc@5"] is None
    for row in report["tasks"]:
        assert row["gold_files"] and all(p.endswith((".c", ".h")) for p in row["gold_files"])
        for name in rankers:
            files = row["rankings"][name]["files"]
            assert len(files) <= L.TOP and all(f["path"].endswith((".c", ".h")) for f in files)
    by_query = {row["query"]: row for row in report["tasks"]}
    # Comments inserted between functions touch none; a rewritten body names its function.
    assert by_query["Document task functions"]["gold_functions"] == []
    assert "src/wallclock.c::function::InitWallClock" in by_query["Use window constants in wallclock"]["gold_functions"]


def test_commits_with_missing_blobs_are_skipped_with_a_reason(tmp_path: Path) -> None:
    r = GitRepo(tmp_path / "gappy")
    r.commit("Initial commit", {"src/clock.c": c_file("InitClock"), "data/notes.txt": "one\n"})
    broken = r.commit("Rewrite the notes file", {"data/notes.txt": "two\n"})
    r.commit("Speed up the clock ticks", {"src/clock.c": c_file("InitClockFast")})
    r.drop_object(f"{broken}:data/notes.txt")
    before = _checkout_state(r.root)
    tasks = tasks_of.select_tasks(r.root, last=5)
    assert [t.query for t in tasks] == ["Speed up the clock ticks"]
    report = L.run_localize(r.root, tasks, ["bm25"])
    assert report["skipped"]["count"] == 1 and report["tasks"] == []
    assert report["skipped"]["reasons"] == {"checkout of the parent failed": 1}
    assert report["skipped"]["tasks"][0]["detail"]
    assert report["summary"]["bm25"]["tasks"] == 0
    assert _checkout_state(r.root)[:3] == before[:3]


def test_unknown_rankers_are_rejected(small: GitRepo) -> None:
    with pytest.raises(InvalidInput):
        L.run_localize(small.root, [], ["bm25", "grep"])


def test_cli_writes_the_report_and_prints_the_table(decomp_repo, tmp_path: Path) -> None:
    import json
    import subprocess

    from typer.testing import CliRunner

    from agent.cli import app

    root = decomp_repo.path
    status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True, text=True).stdout
    out = tmp_path / "loc.json"
    result = CliRunner().invoke(
        app, ["eval", "localize", "--repo", str(root), "--last", "3", "--ranker", "hybrid", "--ranker", "bm25",
              "--json", str(out)],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["summary"]) >= {"hybrid", "bm25"}
    assert report["summary"]["hybrid"]["tasks"] == 3
    assert "Acc@5" in result.output and "hybrid" in result.output
    assert subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                          text=True).stdout == status


def test_cli_rejects_both_last_and_commits(decomp_repo, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agent.cli import app

    listing = tmp_path / "shas.txt"
    listing.write_text(decomp_repo.head + "\n")
    result = CliRunner().invoke(app, ["eval", "localize", "--repo", str(decomp_repo.path), "--last", "2",
                                      "--commits", str(listing), "--json", str(tmp_path / "x.json")])
    assert result.exit_code == 2
    assert "exactly one" in result.output
    assert not (tmp_path / "x.json").exists()


def test_a_killed_evaluations_scratch_folder_is_swept_by_the_next(tmp_path: Path) -> None:
    # a `cra eval localize` stopped by a signal left its cra-eval-* folder in the temporary folder for good
    import os
    import subprocess
    import tempfile

    gone = subprocess.Popen(["true"])
    gone.wait()
    left = Path(tempfile.mkdtemp(prefix=f"{L.SCRATCH_PREFIX}{gone.pid}-"))
    r = GitRepo(tmp_path / "repo")
    r.commit("Initial commit", {"src/clock.c": c_file("InitClock")})
    r.commit("Speed up the clock ticks", {"src/clock.c": c_file("InitClockFast")})
    L.run_localize(r.root, tasks_of.select_tasks(r.root, last=5), ["bm25"])
    assert not left.exists()
    assert not list(Path(tempfile.gettempdir()).glob(f"{L.SCRATCH_PREFIX}{os.getpid()}-*"))
