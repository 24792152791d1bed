"""Validation on the fixture decomp, with its real Makefile: parse, one build in a copy of a built tree, ROM compare."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.builds import COPY_PREFIX, BuildEnvironment, MissingBuildTool, prune
from agent.config import ValidationSettings
from agent.edits import Edit, apply_edits
from agent.errors import InvalidInput, NotAGitRepository
from agent.validation import ValidationResult, validate
from tests.fixtures.decomp import DecompRepo

FAST = ValidationSettings(build=["true"], compare=["true"], timeout_s=30, carry=[])  # for checks that need no compiler
HOST = ValidationSettings(timeout_s=120, carry=[])


def _env(repo: DecompRepo, settings: ValidationSettings = HOST) -> BuildEnvironment:
    return BuildEnvironment.of(repo.path, settings)


def _edit_and_validate(repo: DecompRepo, edits: list[Edit], *, keep_rom: bool = True,
                       settings: ValidationSettings = HOST) -> ValidationResult:
    """Apply `edits` to the fixture and validate the files they touched against its HEAD."""
    changed = [a.path for a in apply_edits(repo.path, edits)]
    return validate(repo.path, changed, base_commit=repo.head, keep_rom=keep_rom, env=_env(repo, settings))


def _compiled(check_log: str) -> list[str]:
    """The C files a build log shows compiled (the fixture's rule prints `cc ... -c -o OBJ SRC`)."""
    return sorted(line.split()[-1] for line in check_log.splitlines() if " -c -o " in line)


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


RENAME = [
    Edit(path="src/main.c", search="static void ReadKeys(void);", replace="static void ReadKeyInput(void);"),
    Edit(path="src/main.c", search="        ReadKeys();\n", replace="        ReadKeyInput();\n"),
    Edit(path="src/main.c", search="static void ReadKeys(void)\n{", replace="static void ReadKeyInput(void)\n{"),
]


def test_renaming_a_static_function_keeps_the_rom(decomp_repo: DecompRepo, host_build: None) -> None:
    result = _edit_and_validate(decomp_repo, RENAME)
    assert [c.name for c in result.checks] == ["parse", "build", "compare"]
    assert all(c.passed for c in result.checks), result
    assert result.check("parse").log_tail == "src/main.c: 0 -> 0 syntax problems"
    build = result.check("build")
    assert build.command == ["make", "compare"] and build.exit_code == 0  # one invocation builds and compares
    assert "rom.bin: OK" in build.log_tail and "build/rom.bin: OK (sha1 " in result.check("compare").log_tail
    assert result.success and result.rom_changed is False and result.keep_rom
    assert result.base_tree == "built" and result.timings["base_build"] > 0  # the first validation at this commit
    assert not (decomp_repo.path / "build").exists()  # nothing was built in the checkout


def test_changing_a_constant_builds_but_changes_the_rom(decomp_repo: DecompRepo, host_build: None) -> None:
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/sprite.c", search="    return MAX_SPRITES;", replace="    return SPRITE_NONE;"),
    ], keep_rom=True)
    build, compare = result.check("build"), result.check("compare")
    assert result.check("parse").passed and build.passed and build.exit_code not in (0, None)
    assert "FAILED" in build.log_tail and not compare.passed and "FAILED (sha1 " in compare.log_tail
    assert result.rom_changed is True and not result.success
    # A task that may change the ROM runs `make` only, succeeds, and still records the change from the ROM's hash.
    relaxed = validate(decomp_repo.path, ["src/sprite.c"], base_commit=decomp_repo.head, keep_rom=False,
                       env=_env(decomp_repo))
    assert relaxed.check("build").command == ["make"] and relaxed.base_tree == "cached"
    assert relaxed.success and relaxed.rom_changed is True and relaxed.check("compare").command is None


def test_the_second_validation_at_a_commit_compiles_only_the_changed_file(decomp_repo: DecompRepo,
                                                                           host_build: None) -> None:
    first = _edit_and_validate(decomp_repo, RENAME)
    assert first.base_tree == "built" and len(_compiled(first.check("build").log_tail)) == 1
    second = _edit_and_validate(decomp_repo, [
        Edit(path="src/task.c", search="void DestroyTask(u8 taskId)\n{\n", replace="void DestroyTask(u8 taskId)\n{\n    // gone\n"),
    ])
    assert second.base_tree == "cached" and "base_build" not in second.timings
    assert _compiled(second.check("build").log_tail) == ["src/task.c"]  # one incremental build of the one file
    assert second.success and second.rom_changed is False


def test_a_syntax_error_stops_validation_before_the_build(decomp_repo: DecompRepo) -> None:
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/task.c", search="void DestroyTask(u8 taskId)\n{\n", replace="void DestroyTask(u8 taskId)\n"),
    ])
    parse, build, compare = result.checks
    assert not parse.passed and parse.log_tail.startswith("src/task.c:")
    assert build.skipped_reason == compare.skipped_reason == "the parse check failed" and build.exit_code is None
    assert not result.success and result.rom_changed is None and "prepare" not in result.timings


@pytest.mark.parametrize(("search", "replace", "what"), [
    ("    gTasks[taskId].isActive = FALSE;", "    gTasks[taskId].isActive = FALSE", "syntax error"),
    ("void DestroyTask(u8 taskId)\n{\n", "void DestroyTask(u8 taskId)\n{\n    {\n", "missing '}'"),
    ("DestroyTask(u8 taskId)\n{\n    if (", "DestroyTask(u8 taskId)\n{\n    iff (", "no #define iff"),
    ("    if (gTasks[taskId].isActive)\n    {\n        gTasks[taskId].isActive = FALSE;",
     "    swich (gTasks[taskId].isActive) {\n        gTasks[taskId].isActive = FALSE;", "swich"),
    ("        gTasks[i].priority = -1;\n", "        gTasks[i].priority = -1;\n        gTasks[i].next = i\n", "missing ';'"),
    ("            InsertTask(i);", "            InsertTask(i)", "#define InsertTask"),
])
def test_the_parse_check_catches_what_the_decomp_fixups_would_hide(decomp_repo: DecompRepo, search: str,
                                                                   replace: str, what: str) -> None:
    source = (decomp_repo.path / "src/task.c").read_text()
    if search not in source:
        pytest.fail(f"the fixture's src/task.c has no {search!r}")
    result = _edit_and_validate(decomp_repo, [Edit(path="src/task.c", search=search, replace=replace)], settings=FAST)
    parse = result.check("parse")
    assert not parse.passed and what in parse.log_tail, parse.log_tail
    line = parse.log_tail.splitlines()[0]
    assert line.startswith("src/task.c:") and line.split(":")[1].isdigit()  # the line is named
    assert result.check("build").skipped_reason == "the parse check failed"


def test_a_statement_macro_may_stand_without_a_semicolon_an_expression_macro_may_not(decomp_repo: DecompRepo) -> None:
    header = decomp_repo.path / "include/task.h"
    apply_edits(decomp_repo.path, [Edit(path="include/task.h", search="#endif", replace="#define TASK_TRACE(x)\n#endif")])
    assert "TASK_TRACE" in header.read_text()
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/task.c", search="void DestroyTask(u8 taskId)\n{\n",
             replace="void DestroyTask(u8 taskId)\n{\n    TASK_TRACE(taskId)\n"),
    ], settings=FAST)
    assert result.check("parse").passed, result.check("parse").log_tail
    # a macro that expands to an expression still needs its ';'
    apply_edits(decomp_repo.path, [Edit(path="include/task.h", search="#endif",
                                        replace="#define TASK_ON(x) gTasks[x].isActive = TRUE\n#endif")])
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/task.c", search="    TASK_TRACE(taskId)\n", replace="    TASK_TRACE(taskId)\n    TASK_ON(taskId)\n"),
    ], settings=FAST)
    assert not result.check("parse").passed and "#define TASK_ON does not make a statement" in result.check("parse").log_tail


def test_a_hanging_build_is_killed_with_its_children(decomp_repo: DecompRepo) -> None:
    pid_file = decomp_repo.path.parent / "sleeper.pid"
    hang = ["sh", "-c", "echo building; sleep 30 & echo $! > \"$CRA_TEST_PID\"; wait"]
    settings = ValidationSettings(build=hang, compare=hang, timeout_s=1, carry=[], keep_trees=0,
                                  env={"CRA_TEST_PID": str(pid_file)})
    start = time.monotonic()
    result = validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False, env=_env(decomp_repo, settings))
    assert time.monotonic() - start < 10
    build = result.check("build")
    assert build.timed_out and not build.passed and 1 <= build.seconds < 10
    assert build.log_tail.startswith("building") and "killed after 1 s" in build.log_tail
    assert result.check("compare").skipped_reason and not result.success
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(sleeper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(sleeper)  # the build's child died with the process group


def test_parse_check_counts_against_the_base_commit(decomp_repo: DecompRepo) -> None:
    # The window table is a fragment included inside an initializer: it has syntax problems at HEAD already.
    result = _edit_and_validate(decomp_repo, [
        Edit(path="src/data/wallclock_windows.h", search=".tilemapLeft = 3,", replace=".tilemapLeft = 4,"),
        Edit(path="src/fresh.c", search="", replace="void Fresh(void)\n{\n    u8 x = 1 +;\n}\n"),
        Edit(path="docs/notes.txt", search="", replace="int (\n"),
    ], settings=FAST)
    log = result.check("parse").log_tail.splitlines()
    assert log[0].startswith("src/fresh.c:3: ") and "u8 x = 1 +;" in log[0]
    before, after = log[1].removeprefix("src/data/wallclock_windows.h: ").split(" syntax")[0].split(" -> ")
    assert before == after and int(before) > 0
    assert log[2].startswith("src/fresh.c: 0 -> ")
    assert len(log) == 3  # the text file is not parsed
    assert not result.check("parse").passed and not result.success


def test_a_missing_command_is_a_failed_check(decomp_repo: DecompRepo) -> None:
    settings = ValidationSettings(build=["cra-no-such-build-tool"], timeout_s=5, carry=[], keep_trees=0)
    result = validate(decomp_repo.path, ["src/task.c"], base_commit=decomp_repo.head, keep_rom=False,
                      env=_env(decomp_repo, settings))
    build = result.check("build")
    assert not build.passed and build.exit_code is None and "could not start cra-no-such-build-tool" in build.log_tail
    assert result.check("parse").passed and not result.success


def test_a_base_commit_that_does_not_build_is_named(decomp_repo: DecompRepo) -> None:
    settings = ValidationSettings(build=["sh", "-c", "echo no toolchain; exit 2"], timeout_s=5, carry=[])
    result = validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False, env=_env(decomp_repo, settings))
    build = result.check("build")
    assert not build.passed and f"the base commit {decomp_repo.head[:12]} itself does not build" in build.log_tail
    assert "no toolchain" in build.log_tail and not any(_env(decomp_repo).trees.glob("*.json"))  # nothing cached
    assert result.base_tree == "broken"


def test_the_benchmark_counts_no_verdict_where_the_base_does_not_build(decomp_repo: DecompRepo) -> None:
    # pokeruby 770d4531dc's parent does not rebuild Ruby's ROM with today's agbcc: cra says so, no verdict is wrong
    from agent.eval.validation import BASE_BROKEN, run_validation_bench

    settings = ValidationSettings(build=["sh", "-c", "echo old toolchain; exit 2"], timeout_s=5, carry=[])
    report = run_validation_bench(decomp_repo.path, _env(decomp_repo, settings), 1)
    built = [c for c in report.cases if c.case != "syntax"]
    assert built and all(c.verdict == BASE_BROKEN and c.right is None for c in built)
    summary = report.summary()
    assert summary["validations"] == len(report.cases) - len(built) and summary["accuracy"] == 1.0
    assert summary["unverifiable"] == [f"{c.commit[:10]} {c.case}" for c in built]


def test_a_missing_carry_source_is_a_clear_error(decomp_repo: DecompRepo) -> None:
    settings = ValidationSettings(build=["true"], compare=["true"], carry=["tools/agbcc"])
    with pytest.raises(MissingBuildTool, match=r"needs tools/agbcc in the checkout .*install\.sh"):
        validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=True, env=_env(decomp_repo, settings))
    assert not (_env(decomp_repo).trees).exists() or not any(_env(decomp_repo).trees.iterdir())


def test_carried_paths_are_linked_into_the_build_tree(decomp_repo: DecompRepo) -> None:
    tool = decomp_repo.path / "tools/fakecc"
    tool.mkdir(parents=True)
    (tool / "marker").write_text("installed\n")
    needs_tool = ["sh", "-c", "test -L tools/fakecc && cat tools/fakecc/marker"]
    settings = ValidationSettings(build=needs_tool, compare=needs_tool, carry=["tools/fakecc"], timeout_s=10)
    result = validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False, env=_env(decomp_repo, settings))
    assert result.check("build").passed and "installed" in result.check("build").log_tail


def test_env_puts_wrappers_first_on_the_path_the_build_runs_with(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    # Older pret trees need host-tool wrappers (their tool sources predate today's GCC): `env` names $PATH to extend it.
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "pret-cc").write_text("#!/bin/sh\necho wrapped: \"$@\"\n")
    (shims / "pret-cc").chmod(0o755)
    build = ["sh", "-c", "pret-cc tools/preproc && make --version | head -1"]
    settings = ValidationSettings(build=build, compare=build, timeout_s=10, carry=[], env={"PATH": f"{shims}:$PATH"})
    env = _env(decomp_repo, settings)
    assert env.environment()["PATH"] == f"{shims}:{os.environ['PATH']}"
    result = validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False, env=env)
    assert result.check("build").passed, result.check("build").log_tail
    assert "wrapped: tools/preproc" in result.check("build").log_tail and "GNU Make" in result.check("build").log_tail


def test_two_concurrent_validations_never_write_to_one_tree(decomp_repo: DecompRepo) -> None:
    # Each build records the tree it ran in and leaves a marker there; the kept tree must never get one.
    record = ["sh", "-c", "pwd >> \"$CRA_TEST_TREES\"; test ! -e marker; touch marker; sleep 1"]
    log = decomp_repo.path.parent / "trees.log"
    settings = ValidationSettings(build=["true"], compare=record, env={"CRA_TEST_TREES": str(log)}, carry=[])
    env = _env(decomp_repo, settings)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=True,
                                                   env=env), range(2)))
    assert all(r.success for r in results), [r.check("build").log_tail for r in results]
    trees = log.read_text().split()
    assert len(trees) == 2 and len(set(trees)) == 2 and all(COPY_PREFIX in t for t in trees)
    assert sorted(r.base_tree for r in results) == ["built", "cached"]  # built once, the other waited for it
    kept = env.trees / decomp_repo.head
    assert kept.is_dir() and not (kept / "marker").exists()
    assert not any(env.trees.glob(f"{COPY_PREFIX}*"))  # both copies removed


def test_a_killed_validation_leaves_no_tree_behind(decomp_repo: DecompRepo) -> None:
    settings = ValidationSettings(build=["true"], compare=["sleep", "60"], carry=[], timeout_s=120)
    env = _env(decomp_repo, settings)
    script = ("import sys; from pathlib import Path; from agent.builds import BuildEnvironment; "
              "from agent.config import ValidationSettings; from agent.validation import validate; "
              f"s = ValidationSettings.model_validate_json({settings.model_dump_json()!r}); "
              f"validate(Path({str(decomp_repo.path)!r}), [], base_commit={decomp_repo.head!r}, keep_rom=True, "
              f"env=BuildEnvironment.of(Path({str(decomp_repo.path)!r}), s))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[1], start_new_session=True)
    deadline = time.monotonic() + 60
    while not any(env.trees.glob(f"{COPY_PREFIX}{proc.pid}-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # into the build
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(env.trees.glob(f"{COPY_PREFIX}{proc.pid}-*"))  # a kill leaves its copy...
    validate(decomp_repo.path, [], base_commit=decomp_repo.head, keep_rom=False, env=env)
    assert not any(env.trees.glob(f"{COPY_PREFIX}*"))  # ...and the next validation sweeps it


def test_built_trees_are_pruned_by_count(decomp_repo: DecompRepo) -> None:
    settings = ValidationSettings(build=["true"], compare=["true"], carry=[], keep_trees=2)
    env = _env(decomp_repo, settings)
    for commit in decomp_repo.commits[-3:]:
        validate(decomp_repo.path, [], base_commit=commit, keep_rom=True, env=env)
        time.sleep(0.01)
    kept = sorted(p.stem for p in env.trees.glob("*.json"))
    assert kept == sorted(decomp_repo.commits[-2:])  # the least recently used went
    assert all(json.loads((env.trees / f"{c}.json").read_text())["commit"] == c for c in kept)
    assert prune(env) == [] and sorted(p.name for p in env.trees.iterdir() if p.is_dir()) == kept


def test_misuse_raises_typed_errors(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    env = _env(decomp_repo, FAST)
    with pytest.raises(NotAGitRepository):
        validate(tmp_path / "missing", [], base_commit=decomp_repo.head, keep_rom=True, env=env)
    with pytest.raises(InvalidInput, match="not a commit"):
        validate(decomp_repo.path, [], base_commit="0" * 40, keep_rom=True, env=env)
    with pytest.raises(InvalidInput, match="not relative"):
        validate(decomp_repo.path, ["../x.c"], base_commit=decomp_repo.head, keep_rom=True, env=env)


def test_the_benchmark_replays_commits_with_a_mutation_and_a_syntax_break(decomp_repo: DecompRepo,
                                                                         host_build: None) -> None:
    from agent.eval.validation import candidates, run_validation_bench

    picked = candidates(decomp_repo.path, 3)
    assert picked and all(f.endswith((".c", ".h")) for c in picked for f in c.files)
    report = run_validation_bench(decomp_repo.path, _env(decomp_repo), 3)
    wrong = [c for c in report.cases if not c.right]
    assert not wrong, wrong
    cases = {c.case for c in report.cases}
    assert {"commit", "mutation", "syntax"} <= cases
    summary = report.summary()
    assert summary["accuracy"] == 1.0 and summary["first_at_a_commit"]["median_base_build_s"] is not None
    assert all(c.base_tree == "cached" for c in report.cases if c.case == "mutation")  # the commit's tree, reused
    assert all(c.verdict == "parse failed" and "build" not in c.timings for c in report.cases if c.case == "syntax")
    assert not any(_env(decomp_repo).trees.glob(f"{COPY_PREFIX}*"))


DMA_MACROS = """
#define DmaSet(dmaNum, src, dest, control) \\
{                                          \\
    vu32 *dmaRegs = (vu32 *)REG_ADDR_DMA##dmaNum; \\
    dmaRegs[0] = (vu32)(src);              \\
}
#define DMA_COPY(dmaNum, src, dest, size, bit) DmaSet(dmaNum, src, dest, (DMA_##bit##BIT | (size)))
#define DmaCopy16(dmaNum, src, dest, size) DMA_COPY(dmaNum, src, dest, size, 16)
#define DmaCopyDefvars(dmaNum, src, dest, size, bit) { DmaCopy##bit(dmaNum, src, dest, size); }
#define DmaCopy16Defvars(dmaNum, src, dest, size) DmaCopyDefvars(dmaNum, src, dest, size, 16)
"""


@pytest.mark.parametrize(("line", "mutated"), [
    ("    DmaCopy16(3, gTilemap, (void *)(VRAM + 0x21c0), 32);", "DmaCopy16(3, gTilemap, (void *)(VRAM + 0x21c0), 33);"),
    ("    DmaCopy16Defvars(3, gBuffers[1], (void *)VRAM, 0x800);", "DmaCopy16Defvars(3, gBuffers[2], (void *)VRAM"),
    ("    x = Min(3, y);", "x = Min(4, y);"),  # a function's argument is a value
])
def test_the_benchmark_never_mutates_an_argument_a_macro_pastes_into_a_name(line: str, mutated: str) -> None:
    # pokeruby: `DmaCopy16(3, ...)` -> 4 gave REG_ADDR_DMA4, undeclared: a build failure, not a changed ROM
    from agent.eval.validation import mutate_constant, pasted_parameters

    source = f"void Show(void)\n{{\n    u8 x;\n{line}\n}}\n"
    pasted = pasted_parameters([DMA_MACROS, source])
    assert pasted["DmaCopy16"] == {0} and pasted["DmaCopy16Defvars"] == {0} and "Min" not in pasted
    text, where = mutate_constant("src/show.c", source, pasted)
    assert mutated in text, where


@pytest.mark.parametrize(("replace", "verdict", "unverifiable"), [
    ("        gTasks[i].prev = i + 3;", "rom changed", ["commit"]),  # 498ff9ae1a with agbcc's -Werror dropped
    ("        gTasks[i].prev = gNoSuchTask;", "build failed", ["commit", "mutation"]),  # with it: it does not compile
])
def test_a_commit_whose_own_tree_does_not_keep_the_rom_gets_no_verdict(decomp_repo: DecompRepo, host_build: None,
                                                                       replace: str, verdict: str,
                                                                       unverifiable: list[str]) -> None:
    # pokeruby 498ff9ae1a kept the ROM with the agbcc of its day, not with today's: cra's verdict is then true here,
    # and a whole build of the commit itself says so; its mutation, made on top of the change, needs the change too
    from agent.eval.validation import run_validation_bench

    task = decomp_repo.path / "src/task.c"
    task.write_text(task.read_text().replace("        gTasks[i].prev = i;", replace, 1))
    subprocess.run(["git", "commit", "-qam", "Document the task list's links"], cwd=decomp_repo.path, check=True)
    report = run_validation_bench(decomp_repo.path, _env(decomp_repo), 1)
    commit = next(c for c in report.cases if c.case == "commit")
    assert commit.verdict == verdict and commit.right is None and "does not rebuild" in commit.detail
    assert report.summary()["unverifiable"] == [f"{commit.commit[:10]} {case}" for case in unverifiable]
    judged = [c for c in report.cases if c.case not in unverifiable]
    assert {c.case for c in report.cases} >= {"commit", "mutation", "syntax"}
    assert all(c.right for c in judged)  # the rest are judged, and right


@pytest.mark.real_repo
def test_real_pokeemerald_validation_verdicts() -> None:
    """On a real pokeemerald checkout with agbcc installed (CRA_POKEEMERALD): the newest commit's three verdicts."""
    from agent.eval.validation import run_validation_bench

    checkout = os.environ.get("CRA_POKEEMERALD")
    if not checkout:
        pytest.skip("set CRA_POKEEMERALD to a pokeemerald clone with tools/agbcc installed to run this")
    env = BuildEnvironment.of(Path(checkout), ValidationSettings())
    report = run_validation_bench(Path(checkout), env, 1)
    assert all(c.right for c in report.cases), [c for c in report.cases if not c.right]
