"""Validation on the fixture decomp, with its real Makefile: parse, build and ROM compare after real edits."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from agent.edits import Edit, apply_edits
from agent.errors import InvalidInput, NotAGitRepository
from agent.validation import ValidationConfig, ValidationResult, validate
from tests.fixtures.decomp import DecompRepo

FAST = ValidationConfig(build=["true"], compare=["true"], timeout_s=30)  # for checks that need no compiler


def _edit_and_validate(repo: DecompRepo, edits: list[Edit], *, keep_rom: bool = True,
                       config: ValidationConfig | None = None) -> ValidationResult:
    """Apply `edits` to the fixture and validate the files they touched against its HEAD."""
    changed = [a.path for a in apply_edits(repo.path, edits)]
    return validate(repo.path, changed, base_commit=repo.head, keep_rom=keep_rom,
                    config=config or ValidationConfig(timeout_s=60))


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def test_renaming_a_static_function_keeps_the_rom(decomp_repo: DecompRepo, host_build: None) -> None:
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/main.c", search="static void ReadKeys(void);", replace="static void ReadKeyInput(void);"),
        Edit(path="src/main.c", search="        ReadKeys();\n", replace="        ReadKeyInput();\n"),
        Edit(path="src/main.c", search="static void ReadKeys(void)\n{", replace="static void ReadKeyInput(void)\n{"),
    ])
    assert [c.name for c in result.checks] == ["parse", "build", "compare"]
    assert all(c.passed and c.exit_code in (0, None) for c in result.checks), result
    assert result.check("parse").log_tail == "src/main.c: 0 -> 0 ERROR nodes"
    assert result.check("build").command == ["make"]
    assert "rom.bin: OK" in result.check("compare").log_tail
    assert result.success and result.rom_changed is False and result.keep_rom


def test_changing_a_constant_builds_but_changes_the_rom(decomp_repo: DecompRepo, host_build: None) -> None:
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/sprite.c", search="    return MAX_SPRITES;", replace="    return SPRITE_NONE;"),
    ], keep_rom=True)
    assert result.check("parse").passed and result.check("build").passed
    compare = result.check("compare")
    assert not compare.passed and compare.exit_code not in (0, None) and "FAILED" in compare.log_tail
    assert result.rom_changed is True and not result.success
    # A task that may change the ROM succeeds with the same edit; compare still ran to record the change.
    relaxed = validate(decomp_repo.path, ["src/sprite.c"], base_commit=decomp_repo.head, keep_rom=False,
                       config=ValidationConfig(timeout_s=60))
    assert relaxed.success and relaxed.rom_changed is True and relaxed.check("compare").exit_code


def test_a_syntax_error_fails_parse_and_build(decomp_repo: DecompRepo, host_build: None) -> None:
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/task.c", search="void DestroyTask(u8 taskId)\n{\n", replace="void DestroyTask(u8 taskId)\n"),
    ])
    parse, build, compare = result.checks
    assert not parse.passed and "src/task.c: 0 -> " in parse.log_tail and "(more than before)" in parse.log_tail
    assert not build.passed and build.exit_code not in (0, None) and not build.timed_out
    assert "src/task.c" in build.log_tail and "error" in build.log_tail
    assert compare.skipped_reason == "the build failed" and compare.exit_code is None
    assert not result.success and result.rom_changed is None


def test_a_hanging_build_is_killed_with_its_children(decomp_repo: DecompRepo) -> None:
    hang = ["sh", "-c", "echo building; sleep 30 & echo $! > sleeper.pid; wait"]
    start = time.monotonic()
    result = validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False,
                      config=ValidationConfig(build=hang, timeout_s=1))
    assert time.monotonic() - start < 10
    build = result.check("build")
    assert build.timed_out and not build.passed and 1 <= build.seconds < 10
    assert build.log_tail.startswith("building") and "killed after 1 s" in build.log_tail
    assert result.check("compare").skipped_reason and not result.success
    sleeper = int((decomp_repo.path / "sleeper.pid").read_text())
    deadline = time.monotonic() + 5
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper)  # the build's child died with the process group


def test_parse_check_counts_against_the_base_commit(decomp_repo: DecompRepo) -> None:
    # The window table is a fragment included inside an initializer: it has ERROR nodes at HEAD already.
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/data/wallclock_windows.h", search=".tilemapLeft = 3,", replace=".tilemapLeft = 4,"),
        Edit(path="src/fresh.c", search="", replace="void Fresh(void)\n{\n    u8 x = 1 +;\n}\n"),
        Edit(path="docs/notes.txt", search="", replace="int (\n"),
    ], config=FAST)
    log = result.check("parse").log_tail.splitlines()
    assert log[0].startswith("src/data/wallclock_windows.h: ") and "(more than before)" not in log[0]
    before, after = log[0].split(": ")[1].split(" ERROR")[0].split(" -> ")
    assert before == after and int(before) > 0
    assert log[1].startswith("src/fresh.c: 0 -> ") and log[1].endswith("(more than before)")
    assert len(log) == 2  # the text file is not parsed
    assert not result.check("parse").passed and result.check("build").passed and not result.success


def test_a_missing_command_is_a_failed_check(decomp_repo: DecompRepo) -> None:
    result = validate(decomp_repo.path, ["src/task.c"], base_commit=decomp_repo.head, keep_rom=False,
                      config=ValidationConfig(build=["cra-no-such-build-tool"], timeout_s=5))
    build = result.check("build")
    assert not build.passed and build.exit_code is None and "could not start cra-no-such-build-tool" in build.log_tail
    assert result.check("parse").passed and not result.success


def test_misuse_raises_typed_errors(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    with pytest.raises(NotAGitRepository):
        validate(tmp_path / "missing", [], base_commit=decomp_repo.head, keep_rom=True, config=FAST)
    with pytest.raises(InvalidInput, match="not a commit"):
        validate(decomp_repo.path, [], base_commit="0" * 40, keep_rom=True, config=FAST)
    with pytest.raises(InvalidInput, match="not relative"):
        validate(decomp_repo.path, ["../x.c"], base_commit=decomp_repo.head, keep_rom=True, config=FAST)
