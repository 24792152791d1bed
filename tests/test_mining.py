"""Mining the history for tasks: real git repositories, the real spaCy model."""

from __future__ import annotations

from pathlib import Path

import pytest

from bootstrap import mining
from bootstrap.mining import MiningReport, mine, subject_reasons, weak_subject, whitespace_only
from tests.fixtures.decomp import POKEMON_SUBJECT, PR_BRANCH, DecompRepo
from tests.fixtures.mining import PR_NUMBER, PR_TITLE, SmallRepo, make_pr_repo, make_small_repo


@pytest.fixture(scope="module")
def mined(decomp_template: DecompRepo) -> MiningReport:
    """The fixture decomp's whole history, mined once (mining only reads the repository)."""
    return mine(decomp_template.path)


def _kept(report: MiningReport) -> dict[str, mining.MinedCommit]:
    return {c.subject: c for c in report.commits}


def test_decomp_work_is_kept(mined: MiningReport, decomp_template: DecompRepo) -> None:
    kept = _kept(mined)
    for subject in ("Document wallclock functions", "Rename sub_80A1234 to InitWallClock", "Fix CaveTransition pals",
                    "Document field effect tasks", "Name field effect sprite templates", "Document task functions",
                    "Add missing BUGFIX for Task_StartSendOutAnim"):
        assert subject in kept, mined.reasons.get(decomp_template.sha(subject))
    doc = kept["Document wallclock functions"]
    assert doc.parent == decomp_template.sha("Initial commit")
    assert doc.author_date.startswith("2017-09-06T")
    assert doc.body == "Name the minute hand helpers and explain the speed table."
    assert [(f.old_path, f.new_path, f.change_type) for f in doc.files] == [
        ("src/wallclock.c", "src/wallclock.c", "MODIFY")]
    assert doc.files[0].diff.startswith("@@ ") and "+// Returns the new angle of the minute hand" in doc.files[0].diff
    assert doc.lines_changed == doc.files[0].added + doc.files[0].deleted > 0


def test_kept_commits_come_newest_first(mined: MiningReport, decomp_template: DecompRepo) -> None:
    order = [decomp_template.commits.index(c.sha) for c in mined.commits]
    assert order == sorted(order, reverse=True)
    assert mined.seen == len(decomp_template.commits)
    assert mined.kept + sum(mined.dropped.values()) == mined.seen


@pytest.mark.parametrize(("subject", "reason"), [
    ("Initial commit", mining.ROOT),
    (f"Merge pull request #12 from {PR_BRANCH}", mining.MERGE),
    ("Fix typo in README", mining.PROSE_ONLY),
    ("Add tidy target to Makefile", mining.BUILD_ONLY),
    ("Format battle_anim_80A9C70.c", mining.FORMATTING_ONLY),
    ("Sort includes", mining.TOO_MANY_FILES),
    ("Add flag constants", mining.TOO_MANY_LINES),
])
def test_decomp_drops_name_the_first_failing_filter(
    mined: MiningReport, decomp_template: DecompRepo, subject: str, reason: str,
) -> None:
    assert mined.reasons[decomp_template.sha(subject)] == reason


def test_renames_deletions_and_latin1_messages(mined: MiningReport) -> None:
    kept = _kept(mined)
    rename = kept["Rename battle_anim_80A9C70.c to battle_anim.c"]
    assert ("src/battle_anim_80A9C70.c", "src/battle_anim.c", "RENAME", 0, 0, False, "") in rename.files
    removal = kept["Remove leftover battle anim asm"]
    deleted = next(f for f in removal.files if f.change_type == "DELETE")
    assert (deleted.old_path, deleted.new_path, deleted.added) == ("asm/battle_anim_80A9C70.s", None, 0)
    assert deleted.deleted > 0
    assert kept[POKEMON_SUBJECT].body == "The game spells it with an accented é."


def test_squashed_pull_request_number_leaves_the_description(mined: MiningReport) -> None:
    squashed = _kept(mined)["Use window constants in wallclock (#42)"]
    assert (squashed.description, squashed.pr) == ("Use window constants in wallclock", 42)
    plain = _kept(mined)["Fix CaveTransition pals"]
    assert (plain.description, plain.pr) == ("Fix CaveTransition pals", None)


def test_merged_branch_commits_carry_the_pull_request(mined: MiningReport) -> None:
    kept = _kept(mined)
    for subject in ("Document field effect tasks", "Name field effect sprite templates"):
        assert (kept[subject].pr, kept[subject].description) == (12, subject)  # strong subjects stay
    assert kept["Document wallclock functions"].pr is None


def test_weak_branch_subjects_take_the_pull_request_title(tmp_path: Path) -> None:
    repo = make_pr_repo(tmp_path / "pr")
    report = mine(repo.path)
    kept = _kept(report)
    assert (kept["wip"].description, kept["wip"].pr) == (PR_TITLE, PR_NUMBER)
    strong = kept["Rename sub_8135CA4 to AdvanceClock"]
    assert (strong.description, strong.pr) == ("Rename sub_8135CA4 to AdvanceClock", PR_NUMBER)
    assert report.reasons[repo.shas["Tweak"]] == mining.SHORT_SUBJECT  # on the main line: no title to borrow
    assert report.reasons[repo.shas["Clock hands stuff"]] == mining.NOT_ACTIONABLE
    assert report.reasons[repo.shas["merge"]] == mining.MERGE


def test_exclude_mines_only_new_commits(decomp_repo: DecompRepo) -> None:
    first = mine(decomp_repo.path)
    assert first.processed == set(decomp_repo.commits)
    again = mine(decomp_repo.path, exclude=first.processed)
    assert (again.seen, again.commits, again.reasons) == (0, [], {})

    repo = SmallRepo(decomp_repo.path)
    new = repo.commit("Document the task loop", repo.edit("src/task.c", "void RunTasks(void)\n{",
                                                          "// Runs every active task once.\nvoid RunTasks(void)\n{"))
    third = mine(decomp_repo.path, exclude=first.processed)
    assert third.seen == 1 and [c.sha for c in third.commits] == [new]


def test_since_keeps_later_commits(decomp_template: DecompRepo) -> None:
    report = mine(decomp_template.path, since="2017-09-20T00:00:00Z")
    assert 0 < report.seen < len(decomp_template.commits)
    assert decomp_template.sha("Document task functions") in report.processed
    assert decomp_template.sha("Document wallclock functions") not in report.processed


def test_missing_blob_is_skipped_with_a_reason(tmp_path: Path) -> None:
    repo = make_small_repo(tmp_path / "lost")
    fixed = repo.commit("Fix the minute hand step", repo.edit("src/clock.c", "angle + 6", "angle + 5"))
    lost = repo.drop_object("HEAD:src/clock.c")
    after = repo.commit("Document the minute hand step", repo.edit("src/clock.c", "static u16 sub_8135C50",
                                                                   "// One step.\nstatic u16 sub_8135C50"))
    kept_sha = repo.commit("Add the hour hand speed", {"src/hours.c": "int gHourHandSpeed = 2;\n"})
    messages: list[str] = []
    report = mine(repo.path, on_progress=messages.append)
    assert report.reasons[fixed] == report.reasons[after] == mining.MISSING_OBJECTS
    assert lost[:7] in report.missing[fixed] or "unable to read" in report.missing[fixed]
    assert [c.sha for c in report.commits] == [kept_sha]
    assert any(fixed[:10] in m and mining.MISSING_OBJECTS in m for m in messages)


def test_missing_tree_is_skipped_with_a_reason(tmp_path: Path) -> None:
    repo = make_small_repo(tmp_path / "lost-tree")
    broken = repo.commit("Add the battle tower code", {"src/tower/tower.c": "int gTowerLevel;\n"})
    kept_sha = repo.commit("Declare the hour hand speed", {"include/hours.h": "extern int gHourHandSpeed;\n"})
    repo.drop_object("HEAD:src/tower")  # after the last commit, which would write it again
    report = mine(repo.path)
    assert report.reasons[broken] == mining.MISSING_OBJECTS
    assert [c.sha for c in report.commits] == [kept_sha]


def test_non_utf8_messages_do_not_crash(tmp_path: Path) -> None:
    repo = make_small_repo(tmp_path / "latin1")
    declared = repo.commit("Use POKéMON in the clock text".encode("latin-1"), {"src/a.c": "int a;\n"},
                           encoding="latin1")
    raw = repo.commit_raw(b"Add the Pok\xe9dex clock hook\n\nCaf\xe9 body\n", {"src/b.c": "int b;\n"})
    kept = {c.sha: c for c in mine(repo.path).commits}
    assert kept[declared].subject == "Use POKéMON in the clock text"
    assert kept[raw].subject == "Add the Pok\ufffddex clock hook" and kept[raw].body == "Caf\ufffd body"


def test_empty_repository_mines_nothing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    SmallRepo(tmp_path / "empty").git("init", "-q")
    report = mine(tmp_path / "empty")
    assert (report.seen, report.commits, report.dropped) == (0, [], {})


def test_pret_subjects() -> None:
    subjects = {
        "Document wallclock functions": None,
        "Rename sub_80A1234 to InitWallClock": None,
        "Fix CaveTransition pals": None,
        "Documented field effect tasks": None,
        "Change IsPokemonCryPlaying to bool32": None,
        "Automatically calculate REMATCH_TABLE_ENTRIES": None,
        "BSS; decompile tileset_anims": None,
        "Use POKéMON in wall clock text": None,
        "Sort includes": mining.SHORT_SUBJECT,
        "oops": mining.SHORT_SUBJECT,
        "Field map obj": mining.NOT_ACTIONABLE,
        "Sound Effects Part 2/6": mining.NOT_ACTIONABLE,
        "Heal location and Field Region Map": mining.NOT_ACTIONABLE,
    }
    assert dict(zip(subjects, subject_reasons(list(subjects)))) == subjects


def test_weak_subjects() -> None:
    assert weak_subject("wip") and weak_subject("more fixes and cleanup")
    assert weak_subject("Apply suggestions from code review")
    assert not weak_subject("Fix CaveTransition pals") and not weak_subject("Rename sub_8135CA4 to AdvanceClock")


def test_whitespace_only_hunks() -> None:
    assert whitespace_only("@@ -1,2 +1,2 @@\n-\tu8 x=1;\n+    u8 x = 1;\n")
    assert whitespace_only("@@ -1,3 +1,1 @@\n-if (a)\n-{\n-}\n+if (a) {}\n")  # re-wrapped lines count too
    assert not whitespace_only("@@ -1 +1 @@\n-u8 x = 1;\n+u8 x = 2;\n")
    assert not whitespace_only("@@ -1 +1 @@\n-u8 x;\n+u8 x; // the x\n")


def test_pydriller_reads_diffs_without_touching_the_repository_config(decomp_repo: DecompRepo) -> None:
    config = (decomp_repo.path / ".git" / "config").read_bytes()
    report = mine(decomp_repo.path)
    assert report.kept
    for commit in report.commits:  # PyDriller's hunks agree with its line counts and with the commit's total
        for f in commit.files:
            lines = f.diff.split("\n")
            assert (f.added, f.deleted) == (sum(x.startswith("+") for x in lines), sum(x.startswith("-") for x in lines))
            assert f.binary or f.diff.startswith("@@") or (f.added, f.deleted) == (0, 0)
        assert commit.lines_changed == sum(f.added + f.deleted for f in commit.files) > 0
    # PyDriller writes blame.markUnblamableLines into every repository it opens: here, only into its throwaway view.
    assert (decomp_repo.path / ".git" / "config").read_bytes() == config


def test_pydriller_failures_on_missing_objects_are_the_ones_mining_skips(tmp_path: Path) -> None:
    repo = make_small_repo(tmp_path / "lost-for-pydriller")
    fixed = repo.commit("Fix the minute hand step", repo.edit("src/clock.c", "angle + 6", "angle + 5"))
    repo.drop_object("HEAD:src/clock.c")
    with mining.pydriller_view(repo.path) as view:
        with pytest.raises(mining._UNREADABLE):
            mining._modified_files(view, fixed)
