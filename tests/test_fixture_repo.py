"""The fixture decomp: its tree and history have the shape the agent's tests rely on, and its
host build tells behaviour-preserving edits (ROM identical) from behaviour changes."""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.decomp import (
    HISTORY,
    MAIN_BRANCH,
    POKEMON_SUBJECT,
    PR_BRANCH,
    ROM_PATH,
    DecompRepo,
    make_decomp_repo,
    run_make,
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True, encoding="utf-8", errors="replace").stdout


def git_bytes(repo: Path, *args: str) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True).stdout


def changed(repo: Path, sha: str) -> list[tuple[str, str]]:
    """(status, path) of each file a commit changes against its first parent, renames found."""
    out = git(repo, "diff-tree", "-r", "-M", "--no-commit-id", "--name-status", f"{sha}^", sha)
    return [(line.split("\t")[0], line.split("\t")[-1]) for line in out.splitlines() if line]


# ---------------------------------------------------------------------------------------------
# Tree
# ---------------------------------------------------------------------------------------------


def test_tree_looks_like_a_pret_decomp(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    files = set(git(repo, "ls-files").splitlines())
    for expected in ["Makefile", "README.md", "rom.sha1", "ld_script.txt", "include/global.h",
                     "include/main.h", "include/task.h", "include/sprite.h", "include/window.h",
                     "include/constants/songs.h", "include/constants/flags.h", "asm/macros.inc",
                     "asm/crt0.s", "data/battle_anim_scripts.s", "data/text/wallclock.inc",
                     "data/maps/LittlerootTown/map.json", "src/data/wallclock_windows.h",
                     "src/wallclock.c", "src/main.c", "src/task.c", "src/field_effect.c",
                     "src/battle_anim.c", "graphics/wallclock/hand.4bpp"]:
        assert expected in files, expected
    c_files = [f for f in files if f.startswith("src/") and f.endswith(".c")]
    assert 6 <= len(c_files) <= 12

    def text(rel: str) -> str:
        return (repo / rel).read_text(encoding="utf-8")

    wallclock = text("src/wallclock.c")
    assert '#include "data/wallclock_windows.h"' in wallclock
    assert "SPRITE_SHAPE(64x64)" in wallclock and "ALIGNED(4)" in wallclock
    assert "static const TaskFunc sSetClockTasks[]" in wallclock
    assert "SetMainCallback2(CB2_WallClock)" in wallclock and "EWRAM_DATA" in wallclock
    for call in ("AddWindow(", "PutWindowTilemap(", "FillWindowPixelBuffer(", "CopyWindowToVram(0, 3)"):
        assert call in wallclock, call  # magic window numbers are left for a task to replace
    assert "CreateTask(sub_80B7D8C, 80)" not in text("src/field_effect.c")
    assert "CreateTask(Task_AshPuff, 80)" in text("src/field_effect.c")
    assert 'INCBIN_U8("graphics/' in text("src/field_effect.c")
    assert "#ifdef BUGFIX" in text("src/field_effect.c")
    battle_anim = text("src/battle_anim.c")
    assert "NAKED" in battle_anim and "asm_unified(" in battle_anim
    for name, owners in {"VBlankCB": ["src/wallclock.c", "src/field_effect.c"],
                         "Task_StartSendOutAnim": ["src/battle_controller_player.c",
                                                   "src/battle_controller_opponent.c"]}.items():
        for owner in owners:
            assert f"static void {name}(" in text(owner), (name, owner)
    assert "#define SPRITE_SHAPE(dim)" in text("include/sprite.h")
    assert ".macro thumb_func_start" in text("asm/macros.inc")
    assert not git(repo, "status", "--porcelain")


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------


def test_history_subjects_in_order(decomp_repo: DecompRepo) -> None:
    expected = [step.subject for step in HISTORY]
    assert 15 <= len(expected) <= 25
    assert decomp_repo.subjects == expected
    logged = git(decomp_repo.path, "log", "--reverse", "--format=%s").splitlines()
    assert logged == expected
    shas = git(decomp_repo.path, "log", "--reverse", "--format=%H").splitlines()
    assert shas == decomp_repo.commits
    assert decomp_repo.head == git(decomp_repo.path, "rev-parse", "HEAD").strip()
    assert git(decomp_repo.path, "branch", "--format=%(refname:short)").split() == [MAIN_BRANCH]
    for subject in ["Initial commit", "Document wallclock functions",
                    "Rename sub_80A1234 to InitWallClock", "Fix CaveTransition pals",
                    "Add missing BUGFIX for Task_StartSendOutAnim",
                    "Use window constants in wallclock (#42)"]:
        assert subject in logged


def test_merge_commit(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    merges = git(repo, "rev-list", "--merges", "HEAD").split()
    assert len(merges) == 1
    merge = merges[0]
    assert merge == decomp_repo.sha(f"Merge pull request #12 from {PR_BRANCH}")
    assert git(repo, "log", "-1", "--format=%b", merge).strip() == "Document field effects"
    parents = git(repo, "log", "-1", "--format=%P", merge).split()
    assert len(parents) == 2
    assert git(repo, "log", "-1", "--format=%s", parents[1]).strip() == "Name field effect sprite templates"
    assert git(repo, "log", "-1", "--format=%s", parents[0]).strip() == "Fix typo in README"
    assert git(repo, "log", "-1", "--format=%cn", merge).strip() == "GitHub"
    # the squashed pull request is an ordinary commit
    squash = decomp_repo.sha("Use window constants in wallclock (#42)")
    assert len(git(repo, "log", "-1", "--format=%P", squash).split()) == 1


def test_non_utf8_commit_message(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    sha = decomp_repo.sha(POKEMON_SUBJECT)
    raw = git_bytes(repo, "cat-file", "commit", sha)
    assert b"\nencoding ISO-8859-1\n" in raw
    assert b"POK\xe9MON" in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    # git re-encodes to UTF-8 on output
    assert git(repo, "log", "-1", "--format=%s", sha).strip() == "Use POKéMON in wall clock text"


def test_binary_file_tracked(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    rel = "graphics/wallclock/hand.4bpp"
    assert rel in git(repo, "ls-files").splitlines()
    data = (repo / rel).read_bytes()
    assert b"\0" in data and len(data) == 2048
    numstat = git(repo, "show", "--numstat", "--format=", decomp_repo.commits[0])
    assert f"-\t-\t{rel}" in numstat.splitlines()


def test_commit_kinds(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path

    # renaming a function touches its definition, its prototype and its callers
    rename = changed(repo, decomp_repo.sha("Rename sub_80A1234 to InitWallClock"))
    assert {path for _, path in rename} == {"src/wallclock.c", "include/wallclock.h", "src/main.c"}
    assert subprocess.run(["git", "grep", "-q", "sub_80A1234"], cwd=repo).returncode == 1

    # a bug fix touching one or two files
    assert 1 <= len(changed(repo, decomp_repo.sha("Fix CaveTransition pals"))) <= 2

    # README-only
    assert changed(repo, decomp_repo.sha("Fix typo in README")) == [("M", "README.md")]

    # formatting only: no change once whitespace is ignored
    fmt = decomp_repo.sha("Format battle_anim_80A9C70.c")
    assert git(repo, "diff", f"{fmt}^", fmt)
    assert not git(repo, "diff", "-w", "--ignore-blank-lines", f"{fmt}^", fmt)

    # a file rename and a deletion
    moved = changed(repo, decomp_repo.sha("Rename battle_anim_80A9C70.c to battle_anim.c"))
    assert ("R100", "src/battle_anim.c") in moved
    removed = changed(repo, decomp_repo.sha("Remove leftover battle anim asm"))
    assert ("D", "asm/battle_anim_80A9C70.s") in removed

    # a commit touching 7+ files, and a huge one
    assert len(changed(repo, decomp_repo.sha("Sort includes"))) >= 7
    numstat = git(repo, "show", "--numstat", "--format=", decomp_repo.sha("Add flag constants"))
    assert sum(int(line.split("\t")[0]) for line in numstat.splitlines() if line) > 200

    # a json-only commit and a Makefile-only commit
    assert changed(repo, decomp_repo.sha("Add music to LittlerootTown map.json")) == [
        ("M", "data/maps/LittlerootTown/map.json")]
    assert changed(repo, decomp_repo.sha("Add tidy target to Makefile")) == [("M", "Makefile")]


def test_shas_are_deterministic(decomp_template: DecompRepo, tmp_path: Path) -> None:
    again = make_decomp_repo(tmp_path / "again")
    assert again.commits == decomp_template.commits
    assert again.rom_sha1 == decomp_template.rom_sha1
    dates = git(again.path, "log", "--format=%at %ct %an <%ae>").splitlines()
    assert dates == git(decomp_template.path, "log", "--format=%at %ct %an <%ae>").splitlines()


def test_flat_repo_has_the_final_tree(decomp_template: DecompRepo, decomp_repo_flat: DecompRepo) -> None:
    assert decomp_repo_flat.subjects == ["Initial commit"]
    assert git(decomp_repo_flat.path, "rev-list", "--count", "HEAD").strip() == "1"
    tree = git(decomp_repo_flat.path, "rev-parse", "HEAD^{tree}")
    assert tree == git(decomp_template.path, "rev-parse", "HEAD^{tree}")


def test_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("x")
    with pytest.raises(FileExistsError):
        make_decomp_repo(tmp_path)


# ---------------------------------------------------------------------------------------------
# Host build: `make` builds the ROM and `make compare` checks it against rom.sha1
# ---------------------------------------------------------------------------------------------


def rom_bytes(repo: Path) -> bytes:
    return (repo / ROM_PATH).read_bytes()


def sub(path: Path, pattern: str, repl: str, count: int = 1) -> None:
    """Regex-replace in a file, asserting the number of replacements."""
    text, n = re.subn(pattern, repl, path.read_text(encoding="utf-8"))
    assert n == count, (path, pattern, n)
    path.write_text(text, encoding="utf-8")


@pytest.mark.usefixtures("host_build")
def test_head_builds_and_matches(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    proc = run_make(repo, "compare")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{ROM_PATH}: OK" in proc.stdout
    rom = rom_bytes(repo)
    assert hashlib.sha1(rom).hexdigest() == decomp_repo.rom_sha1
    assert (repo / "rom.sha1").read_text() == f"{decomp_repo.rom_sha1}  {ROM_PATH}\n"
    for symbol in (b"InitWallClock", b"VBlankCB", b"Task_StartSendOutAnim", b"sWindowTemplates", b"gTasks"):
        assert symbol not in rom  # names never reach the ROM
    assert not git(repo, "status", "--porcelain")  # build/ is ignored


@pytest.mark.usefixtures("host_build")
def test_renames_and_comments_keep_the_rom(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    assert run_make(repo, ROM_PATH).returncode == 0
    before = rom_bytes(repo)

    # a static function, a static function named the same elsewhere, a global across files
    sub(repo / "src/wallclock.c", r"\bVBlankCB\b", "VBlankCB_WallClock", count=3)
    sub(repo / "src/battle_controller_player.c", r"\bTask_StartSendOutAnim\b",
        "Task_StartSendOutAnim_Player", count=3)
    for rel, count in [("src/wallclock.c", 2), ("include/wallclock.h", 1), ("src/main.c", 1)]:
        sub(repo / rel, r"\bInitWallClock\b", "CB2_StartWallClock", count=count)
    # comments, blank lines and a literal replaced by its named constant
    sub(repo / "src/task.c", r"\nvoid RunTasks\(void\)\n",
        "\n/*\n * Runs every active task once.\n */\n\nvoid RunTasks(void)\n")
    sub(repo / "src/field_effect.c", r"(    DestroyTask\(taskId\);\n)", r"\1    // done\n", count=2)
    sub(repo / "src/wallclock.c", r"CopyWindowToVram\(0, 3\);", "CopyWindowToVram(WIN_MSG, COPYWIN_FULL);")

    proc = run_make(repo, "compare")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert rom_bytes(repo) == before


@pytest.mark.usefixtures("host_build")
@pytest.mark.parametrize("rel, pattern, repl", [
    ("src/wallclock.c", r"tHours = 10;", "tHours = 11;"),
    ("src/data/wallclock_windows.h", r"\.tilemapLeft = 3,", ".tilemapLeft = 4,"),
    ("src/battle_controller_player.c", r"CreateTask\(Task_StartSendOutAnim, 5\)",
     "CreateTask(Task_StartSendOutAnim, 6)"),
])
def test_behaviour_change_builds_but_fails_compare(decomp_repo: DecompRepo, rel: str, pattern: str,
                                                   repl: str) -> None:
    repo = decomp_repo.path
    sub(repo / rel, pattern, repl)
    built = run_make(repo, ROM_PATH)
    assert built.returncode == 0, built.stdout + built.stderr
    proc = run_make(repo, "compare")
    assert proc.returncode != 0
    assert "FAILED" in proc.stdout + proc.stderr
    assert hashlib.sha1(rom_bytes(repo)).hexdigest() != decomp_repo.rom_sha1


@pytest.mark.usefixtures("host_build")
def test_syntax_error_fails_the_build(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    sub(repo / "src/wallclock.c", r"gTasks\[taskId\]\.tHours = 10;", "gTasks[taskId].tHours = 10")
    proc = run_make(repo, "compare")
    assert proc.returncode != 0
    assert "error" in proc.stderr.lower()
    assert not (repo / ROM_PATH).exists()


@pytest.mark.usefixtures("host_build")
def test_every_commit_matches(decomp_repo: DecompRepo) -> None:
    """As in the real decomps, no commit of the history changes the ROM."""
    repo = decomp_repo.path
    for sha, subject in zip(decomp_repo.commits, decomp_repo.subjects, strict=True):
        git(repo, "checkout", "-q", "--detach", sha)
        proc = run_make(repo, "compare")
        assert proc.returncode == 0, (subject, proc.stdout + proc.stderr)
    git(repo, "checkout", "-q", MAIN_BRANCH)
