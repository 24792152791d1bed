"""The commit-history tables and the scores built on them: only commits reachable from the indexed HEAD."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent import store
from agent.index import history
from agent.index.history import BadCommit, CommitRecord

T0 = 1_600_000_000


class GitRepo:
    """A tiny git repository built commit by commit, with fixed dates."""

    def __init__(self, root: Path):
        self.root = root
        self.clock = T0
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str) -> str:
        """Run git here and return its stripped stdout."""
        env = {**os.environ, "GIT_AUTHOR_DATE": f"{self.clock} +0000", "GIT_COMMITTER_DATE": f"{self.clock} +0000"}
        proc = subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=self.root, env=env,
                              capture_output=True, text=True, check=True)
        return proc.stdout.strip()

    def commit(self, subject: str, files: dict[str, str | None], body: str = "") -> str:
        """Write (or with None, delete) files, commit them all, return the sha."""
        for rel, text in files.items():
            path = self.root / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
        self.git("add", "-A")
        self.clock += 3600
        self.git("commit", "-q", "--allow-empty", "-m", subject + ("\n\n" + body if body else ""))
        return self.git("rev-parse", "HEAD")

    def drop_object(self, spec: str) -> None:
        """Delete the loose object `spec` names, as in a clone with missing blobs."""
        sha = self.git("rev-parse", spec)
        (self.root / ".git" / "objects" / sha[:2] / sha[2:]).unlink()


def c_file(*funcs: str) -> str:
    """A C file defining one void function per name, four lines each."""
    return "".join(f"void {name}(void)\n{{\n    Work({i});\n}}\n" for i, name in enumerate(funcs))


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    """A small history: palettes, a wall clock, a big sweep and a side branch."""
    r = GitRepo(tmp_path / "repo")
    r.commit("Initial commit", {"src/palette.c": c_file("LoadPalette"), "include/palette.h": "void LoadPalette(void);\n",
                                "src/wallclock.c": c_file("InitWallClock"), "src/sweep.c": c_file("Sweep"),
                                "README.md": "hi\n"})
    r.commit("Fix palette fading in the intro", {"src/palette.c": c_file("LoadPalette", "FadePalette"),
                                                "include/palette.h": "void LoadPalette(void);\nvoid FadePalette(void);\n"})
    r.commit("Document wall clock hands", {"src/wallclock.c": c_file("InitWallClock", "CalcHandAngle")})
    return r


def _open(tmp_path: Path):
    return store.connect(tmp_path / "state" / "cra.duckdb")


def test_tokenize_splits_identifiers_and_folds_plurals() -> None:
    assert history.tokenize("Fix CaveTransition pals") == ["fix", "cavetransition", "cave", "transition", "pal"]
    assert history.tokenize("the sMoveRelearner_state of a task") == ["smoverelearner", "move", "relearner", "state", "task"]
    assert history.strip_pr_suffix("Use window constants (#42)") == "Use window constants"


def test_read_commits_lists_files_with_status_and_line_counts(repo: GitRepo) -> None:
    head = repo.git("rev-parse", "HEAD")
    [rec] = list(history.read_commits(repo.root, [head], numstat=True))
    assert isinstance(rec, CommitRecord)
    assert rec.subject == "Document wall clock hands"
    assert [(f.path, f.status, f.added, f.deleted) for f in rec.files] == [("src/wallclock.c", "M", 4, 0)]


def test_read_commits_reports_unreadable_commits_and_goes_on(repo: GitRepo) -> None:
    bad = repo.commit("Tweak the sweep file", {"src/sweep.c": c_file("Sweep", "SweepMore")})
    good = repo.commit("Rename the wall clock", {"src/wallclock.c": c_file("InitClock", "CalcHandAngle")})
    repo.drop_object(f"{bad}:src/sweep.c")
    first = repo.git("rev-list", "--max-parents=0", "HEAD")
    out = list(history.read_commits(repo.root, [good, bad, first], numstat=True))
    assert [type(o).__name__ for o in out] == ["CommitRecord", "BadCommit", "CommitRecord"]
    assert isinstance(out[1], BadCommit) and out[1].sha == bad and out[1].reason


def test_update_follows_head_both_ways_and_never_keeps_unreachable_commits(repo: GitRepo, tmp_path: Path) -> None:
    old = repo.git("rev-parse", "HEAD~1")
    head = repo.git("rev-parse", "HEAD")
    repo.git("checkout", "-q", "-b", "side", old)
    side = repo.commit("Side branch palette work", {"src/palette.c": c_file("LoadPalette", "FadePalette", "Side")})
    con = _open(tmp_path)
    try:
        first = history.update_history(con, repo.root, head)
        assert len(first.added) == 3 and history.history_head(con) == head
        assert history.update_history(con, repo.root, head).added == []  # already there: nothing to do
        moved = history.update_history(con, repo.root, side)
        assert (moved.added, moved.removed) == ([side], [head])
        shas = {r[0] for r in con.execute("SELECT sha FROM commits").fetchall()}
        assert shas == set(repo.git("rev-list", side).split())
        assert head not in shas
        terms = {r[0] for r in con.execute("SELECT DISTINCT sha FROM commit_terms").fetchall()}
        assert terms <= shas
        back = history.update_history(con, repo.root, old)
        assert back.removed == [side]
        assert {r[0] for r in con.execute("SELECT sha FROM commits").fetchall()} == set(repo.git("rev-list", old).split())
    finally:
        con.close()


def test_a_merge_is_described_by_its_branch_and_pr_title(repo: GitRepo, tmp_path: Path) -> None:
    repo.git("checkout", "-q", "-b", "sweeper")
    repo.commit("Name the helpers", {"src/sweep.c": c_file("Sweep", "SweepHelper")})
    repo.commit("More names", {"include/sweep.h": "void Sweep(void);\n"})
    repo.git("checkout", "-q", "main")
    repo.git("merge", "-q", "--no-ff", "-m", "Merge pull request #1 from dana/sweeper\n\nDocument the broom tool", "sweeper")
    con = _open(tmp_path)
    try:
        history.update_history(con, repo.root, repo.git("rev-parse", "HEAD"))
        merge = con.execute("SELECT tokens, n_files FROM commits WHERE is_merge").fetchall()
        hist = history.load(con)
    finally:
        con.close()
    assert merge == [(["sweeper", "document", "broom", "tool"], 2)]
    assert set(history.similar_commit_files(hist, "broom tool")) == {"src/sweep.c", "include/sweep.h"}
    # Co-change counts the branch's own commits, not the merge that repeats them.
    assert "include/sweep.h" not in history.cochange(hist, ["src/sweep.c"])


def test_similar_commit_files_ranks_files_of_matching_commits(repo: GitRepo, tmp_path: Path) -> None:
    repo.commit("Reformat everything", {f"src/f{i}.c": c_file(f"F{i}") for i in range(8)} | {
        "src/palette.c": c_file("LoadPalette", "FadePalette", "X")})
    con = _open(tmp_path)
    try:
        history.update_history(con, repo.root, repo.git("rev-parse", "HEAD"))
        hist = history.load(con)
    finally:
        con.close()
    scores = history.similar_commit_files(hist, "Fade the palette faster")
    assert list(scores)[:2] in (["src/palette.c", "include/palette.h"], ["include/palette.h", "src/palette.c"])
    assert "src/wallclock.c" not in scores
    clock = history.similar_commit_files(hist, "wall clock hands drift")
    assert list(clock) == ["src/wallclock.c"]
    assert history.similar_commit_files(hist, "zzz unrelated words") == {}
    together = history.cochange(hist, ["src/palette.c"])
    assert list(together)[0] == "include/palette.h"
    assert "src/palette.c" not in together


def test_damping_prefers_small_commits_and_recency_prefers_new_ones(tmp_path: Path) -> None:
    r = GitRepo(tmp_path / "repo")
    r.commit("Initial commit", {"a.c": "1\n", "b.c": "1\n", "c.c": "1\n", **{f"x{i}.c": "1\n" for i in range(9)}})
    r.commit("Tune battle music", {"a.c": "2\n", **{f"x{i}.c": "2\n" for i in range(9)}})
    r.commit("Tune battle music", {"b.c": "2\n"})
    con = _open(tmp_path)
    try:
        history.update_history(con, r.root, r.git("rev-parse", "HEAD"))
        hist = history.load(con)
    finally:
        con.close()
    scores = history.similar_commit_files(hist, "Tune battle music")
    assert scores["b.c"] > scores["a.c"]
    assert history.recency(0) == 1.0 and history.recency(int(history.HALF_LIFE_COMMITS)) == pytest.approx(0.5)


def test_unreadable_commits_are_recorded_once_and_score_nothing(repo: GitRepo, tmp_path: Path, monkeypatch) -> None:
    head = repo.git("rev-parse", "HEAD")
    real = history.read_commits

    def flaky(top, shas, **kw):
        for rec in real(top, shas, **kw):
            yield BadCommit(rec.sha, "unable to read") if rec.sha == head else rec

    monkeypatch.setattr(history, "read_commits", flaky)
    con = _open(tmp_path)
    try:
        report = history.update_history(con, repo.root, head)
        assert [b.sha for b in report.unreadable] == [head]
        hist = history.load(con)
        assert "src/wallclock.c" not in history.similar_commit_files(hist, "Document wall clock hands")
        repo.commit("Another change", {"README.md": "bye\n"})
        assert history.update_history(con, repo.root, repo.git("rev-parse", "HEAD")).unreadable == []
    finally:
        con.close()


def test_a_store_without_history_scores_nothing(tmp_path: Path) -> None:
    con = _open(tmp_path)
    try:
        hist = history.load(con)
    finally:
        con.close()
    assert hist.empty
    assert history.similar_commit_files(hist, "anything at all") == {}
    assert history.cochange(hist, ["src/palette.c"]) == {}
    assert history.recent_files(hist) == {}


def test_history_follows_renames_to_the_current_path(tmp_path: Path) -> None:
    r = GitRepo(tmp_path / "repo")
    body = c_file("InitBerryTree", "GrowBerryTree", "WaterBerryTree")
    r.commit("Initial commit", {"src/field/berry.c": body})
    r.commit("Water the berry trees twice", {"src/field/berry.c": body.replace("Work(2)", "Work(22)")})
    r.git("mv", "src/field/berry.c", "src/berry_old.c")
    r.commit("Move berry code out of field", {})
    r.git("mv", "src/berry_old.c", "src/berry.c")
    r.commit("Name the berry file", {})
    con = _open(tmp_path)
    try:
        history.update_history(con, r.root, r.git("rev-parse", "HEAD"))
        hist = history.load(con)
    finally:
        con.close()
    assert list(history.similar_commit_files(hist, "water berry trees")) == ["src/berry.c"]
    assert set(hist.paths) == {"src/berry.c"}


def test_recent_files_weigh_the_last_commits_and_skip_merges_and_sweeps(tmp_path: Path) -> None:
    r = GitRepo(tmp_path / "repo")
    r.commit("Initial commit", {"a.c": "1\n", "b.c": "1\n", "c.c": "1\n"})
    r.commit("Edit a", {"a.c": "2\n"})
    r.commit("Sweep", {f"s{i}.c": "1\n" for i in range(history.MAX_COMMIT_FILES + 1)})
    r.git("checkout", "-q", "-b", "side")
    r.commit("Edit c on a branch", {"c.c": "2\n"})
    r.git("checkout", "-q", "main")
    r.clock += 3600
    r.git("merge", "-q", "--no-ff", "-m", "Merge side", "side")
    r.commit("Edit b", {"b.c": "2\n"})
    con = _open(tmp_path)
    try:
        history.update_history(con, r.root, r.git("rev-parse", "HEAD"))
        hist = history.load(con)
    finally:
        con.close()
    scores = history.recent_files(hist, half_life=1.0)
    # Ages, newest first: Edit b 0, the merge 1, Edit c 2, the sweep 3, Edit a 4, the initial commit 5.
    assert sorted(scores, key=scores.get, reverse=True) == ["b.c", "c.c", "a.c"]
    assert scores["c.c"] == pytest.approx(history.recency(2, 1.0) + history.recency(5, 1.0))  # not the merge's
    assert not any(path.startswith("s") for path in scores)
