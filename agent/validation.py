"""Checks after an edit, in order: does the C still parse, does the ROM build, is it still the same ROM."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pydantic import BaseModel

from agent.builds import BuildEnvironment, prepared_tree, rom_files, rom_hashes
from agent.errors import InvalidInput, NotAGitRepository
from agent.index.parse import SyntaxProblem, language_of, syntax_problems
from agent.repo import GitError, file_at, git, safe_relative

LOG_TAIL_LINES = 60
LOG_TAIL_BYTES = 256 * 1024  # read no more than this from the end of a command's output
PARSED_LANGS = ("c", "h")
MACRO_LINES = 30  # a #define's continuation lines read, at most
CPLUSPLUS = re.compile(  # shapes only C++ has (pret's C names variables `template` and `class`)
    rb"\bstd::|\benum\s+class\b|^\s*namespace\s+\w*\s*\{|^\s*template\s*<|^\s*class\s+\w+\s*(?:final\s*)?[:{]",
    re.MULTILINE)
COMPARE_FAILED = re.compile(r"^\S+: FAILED$", re.MULTILINE)  # sha1sum -c's line for a ROM that differs


class Check(BaseModel):
    """One check's outcome: the command run (None for the parse check), how it ended, the end of its log."""

    name: str
    command: list[str] | None
    exit_code: int | None = None
    passed: bool
    timed_out: bool = False
    seconds: float = 0.0
    log_tail: str = ""
    skipped_reason: str | None = None


class ValidationResult(BaseModel):
    """The checks in the order they ran, the verdict, and where the time went."""

    checks: list[Check]
    success: bool
    rom_changed: bool | None  # None: no ROM was built, or none is known to compare with
    keep_rom: bool
    # "cached", "built" (this validation built it first), "fresh" (none kept) or "broken" (the base commit's own
    # tree does not build: no edit at it can be judged)
    base_tree: str | None = None
    timings: dict[str, float] = {}  # parse, prepare (base_build within it), build, compare

    def check(self, name: str) -> Check:
        """The check called `name` ("parse", "build" or "compare")."""
        return next(c for c in self.checks if c.name == name)


def validate(edited: Path, changed: Sequence[str], *, base_commit: str, keep_rom: bool,
             env: BuildEnvironment) -> ValidationResult:
    """Check edits made at `base_commit`: `edited` holds the repo-relative `changed` files (a worktree, or just them).

    The parse check runs first and stops a broken file before any build. Then one build in a private copy of the
    tree built at `base_commit`: `make compare` for a ROM-preserving task, `make` for the others, with the ROM's
    hash recorded either way.
    """
    edited = Path(edited)
    if not edited.is_dir():
        raise NotAGitRepository(f"{edited} is not a directory; validation needs the folder with the edited files")
    for path in changed:
        if not safe_relative(path):
            raise InvalidInput(f"changed path {path!r} is not relative to the worktree's top level")
    try:
        git(env.repo, "rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}")
    except GitError:
        raise InvalidInput(f"{base_commit!r} is not a commit of the repository at {env.repo}") from None

    timings: dict[str, float] = {}
    parse = parse_check(edited, changed, base_commit, env.repo)
    timings["parse"] = parse.seconds
    command = env.command(keep_rom)
    if not parse.passed:
        skipped = "the parse check failed"
        return ValidationResult(checks=[parse, _skipped("build", command, skipped), _skipped("compare", None, skipped)],
                                success=False, rom_changed=None, keep_rom=keep_rom, timings=timings)
    env.carried()  # a missing tool is the user's to fix, not a failed check

    def base_build(cmd: list[str], tree: Path) -> tuple[bool, str]:
        check = run_check("base build", cmd, tree, env)
        return check.passed, check.log_tail

    with prepared_tree(env, base_commit, edited, changed, base_build) as prep:
        timings["prepare"] = prep.prepare_s
        base = prep.base
        if base is not None and base.built_now:
            timings["base_build"] = base.build_s
        tree_kind = "fresh" if base is None else "built" if base.built_now else "cached"
        if base is not None and not base.ok:
            build = Check(name="build", command=env.settings.build, passed=False, seconds=base.build_s,
                          log_tail=f"the base commit {base_commit[:12]} itself does not build, before any edit:\n"
                                   f"{base.log_tail}")
            return ValidationResult(checks=[parse, build, _skipped("compare", None, "the build failed")],
                                    success=False, rom_changed=None, keep_rom=keep_rom, base_tree="broken",
                                    timings=timings)
        build = run_check("build", command, prep.path, env)
        timings["build"] = build.seconds
        compared = keep_rom and build.exit_code not in (0, None) and COMPARE_FAILED.search(build.log_tail) is not None
        built = build.passed or compared  # `make compare` says FAILED only once the ROM is built
        build = build.model_copy(update={"passed": built})
        if not built:
            return ValidationResult(checks=[parse, build, _skipped("compare", None, "the build failed")],
                                    success=False, rom_changed=None, keep_rom=keep_rom, base_tree=tree_kind,
                                    timings=timings)
        compare, rom_changed = compare_rom(prep.path, env, base.roms if base else None,
                                           passed=build.exit_code == 0 if keep_rom else None)
        timings["compare"] = compare.seconds
    success = build.passed and (compare.passed or not keep_rom)
    return ValidationResult(checks=[parse, build, compare], success=success, rom_changed=rom_changed, keep_rom=keep_rom,
                            base_tree=tree_kind, timings=timings)


def compare_rom(tree: Path, env: BuildEnvironment, base_roms: dict[str, str] | None, *,
                passed: bool | None) -> tuple[Check, bool | None]:
    """Hash the built ROM against the base build's (else the checksum file's); `passed` is `make compare`'s verdict."""
    start = time.monotonic()
    expected = base_roms or {k: v for k, v in rom_files(tree, env.settings).items() if v}
    built = rom_hashes(tree, env.settings)
    lines, changed = [], None
    for name, digest in built.items():
        if name in expected:
            same = digest == expected[name]
            changed = bool(changed) or not same
            lines.append(f"{name}: {'OK' if same else 'FAILED'} (sha1 {digest}" + ("" if same else f", base {expected[name]}") + ")")
    if changed is None:
        lines.append("no ROM file to compare: name it in [validation] rom" if not built
                     else "no base hash known for " + ", ".join(built))
    if passed is not None and changed is None:
        changed = not passed
    verdict = (not changed) if passed is None else passed
    return Check(name="compare", command=env.settings.compare if passed is not None else None, passed=bool(verdict),
                 seconds=time.monotonic() - start, log_tail="\n".join(lines)), changed


def _skipped(name: str, command: list[str] | None, reason: str) -> Check:
    """A check that did not run, and why."""
    return Check(name=name, command=command, passed=False, skipped_reason=reason)


def parse_check(edited: Path, changed: Sequence[str], base_commit: str, repo: Path) -> Check:
    """Fail on any syntax problem a changed C file has now and did not have at `base_commit`, naming its line.

    Problems are ERROR and MISSING nodes after the decomp-aware fixups, shapes pret's C never has, and lines the
    fixups read as bare macro calls whose name is not a macro the repository defines.
    """
    start = time.monotonic()
    lines, failures, macro_lines = [], [], []
    for path in dict.fromkeys(changed):  # each file once, in order
        if language_of(path) not in PARSED_LANGS:
            continue
        now = edited / path
        old, new = file_at(repo, base_commit, path), now.read_bytes() if now.is_file() else None
        if any(data is not None and CPLUSPLUS.search(data) for data in (old, new)):
            lines.append(f"{path}: C++, not checked")  # a host tool's header (pret's tools/): not the ROM's C
            continue
        before, after = _problems(old), _problems(new)
        lines.append(f"{path}: {len(before)} -> {len(after)} syntax problems")
        for problem in _new_problems(before, after):
            if problem.macro:
                macro_lines.append((path, problem))
            else:
                failures.append(f"{path}:{problem.line}: {problem.what}: {problem.text}")
    if macro_lines:
        bodies = _macro_bodies(repo, base_commit, edited, {p.macro for _, p in macro_lines if p.macro})
        for path, p in macro_lines:
            if p.macro not in bodies:
                failures.append(f"{path}:{p.line}: {p.what}, and the repository has no #define {p.macro}: {p.text}")
            elif p.statement and not _is_statement(p.macro, bodies, repo, base_commit, edited):
                failures.append(f"{path}:{p.line}: {p.what}, and #define {p.macro} does not make a statement: "
                                f"{p.text}")
    log = failures + lines
    return Check(name="parse", command=None, passed=not failures, seconds=time.monotonic() - start,
                 log_tail="\n".join(log[:LOG_TAIL_LINES]) or "no C files changed")


def run_check(name: str, command: list[str], tree: Path, env: BuildEnvironment) -> Check:
    """Run `command` in `tree` in its own process group; past the timeout, SIGKILL the whole group."""
    timeout = env.settings.timeout_s
    start = time.monotonic()
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(command, cwd=tree, env=env.environment(), stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return Check(name=name, command=command, passed=False, seconds=time.monotonic() - start,
                         log_tail=f"could not start {command[0]}: {exc.strerror or exc}")
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # timed out, or this process was interrupted: the whole group goes
                _kill_group(proc)
        tail = _tail(log)
    if timed_out:
        tail = f"{tail}\n[killed after {timeout:g} s]".lstrip("\n")
    return Check(name=name, command=command, exit_code=proc.returncode, passed=proc.returncode == 0 and not timed_out,
                 timed_out=timed_out, seconds=time.monotonic() - start, log_tail=tail)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `proc` leads, and reap `proc`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _tail(log: IO[bytes]) -> str:
    """The last LOG_TAIL_LINES lines written to `log`."""
    size = log.seek(0, os.SEEK_END)
    log.seek(max(0, size - LOG_TAIL_BYTES))
    return "\n".join(log.read().decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:])


def _problems(data: bytes | None) -> list[SyntaxProblem]:
    """The syntax problems of one C file's content (none for no file)."""
    return syntax_problems(data) if data is not None else []


def _new_problems(before: list[SyntaxProblem], after: list[SyntaxProblem]) -> list[SyntaxProblem]:
    """The problems `after` has beyond `before`, counted per kind; named by the lines whose text is new."""
    left = Counter((p.what, p.text) for p in before)
    unmatched = []
    for problem in after:
        key = (problem.what, problem.text)
        if left[key]:
            left[key] -= 1
        else:
            unmatched.append(problem)
    extra = Counter(p.what for p in after) - Counter(p.what for p in before)  # an edited line keeps its problem
    new = []
    for problem in unmatched:
        if extra[problem.what]:
            extra[problem.what] -= 1
            new.append(problem)
    return new


def _macro_bodies(repo: Path, commit: str, edited: Path, names: set[str]) -> dict[str, str]:
    """The body of each of `names` a `#define` gives, in the repository at `commit` or in the edited files."""
    pattern = r"^[[:space:]]*#[[:space:]]*define[[:space:]]+(" + "|".join(sorted(names)) + r")([^A-Za-z0-9_]|$)"
    found = git(repo, "grep", "-h", "-E", "-A", str(MACRO_LINES), pattern, commit, "--", "*.c", "*.h", check=False)
    found += subprocess.run(["grep", "-rhE", "-A", str(MACRO_LINES), "--include=*.c", "--include=*.h", pattern, "."],
                            cwd=edited, capture_output=True, check=False).stdout
    bodies: dict[str, str] = {}
    lines = found.decode("utf-8", "replace").splitlines()
    for i, line in enumerate(lines):
        if (m := re.match(r"\s*#\s*define\s+(\w+)(\([^)]*\))?(.*)", line)) and m.group(1) in names:
            body = [m.group(3)]
            while body[-1].rstrip().endswith("\\") and i + len(body) < len(lines):
                body.append(lines[i + len(body)])
            text = " ".join(part.rstrip().removesuffix("\\") for part in body)
            bodies.setdefault(m.group(1), re.sub(r"/\*.*?\*/|//.*", "", text).strip())
    return bodies


def _is_statement(name: str, bodies: dict[str, str], repo: Path, commit: str, edited: Path, depth: int = 3) -> bool:
    """Whether macro `name` expands to a statement: an empty body, one ending in `;` or `}`, or a lone call of
    another macro that does."""
    body = bodies.get(name, "")
    if not body or body.endswith((";", "}")):
        return True
    call = re.fullmatch(r"(\w+)\s*\(.*\)", body)
    if call is None or depth == 0:
        return False
    if call.group(1) not in bodies:
        bodies |= _macro_bodies(repo, commit, edited, {call.group(1)})
    return call.group(1) in bodies and _is_statement(call.group(1), bodies, repo, commit, edited, depth - 1)
