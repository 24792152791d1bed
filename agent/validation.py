"""Checks after an edit, in order: does the C still parse, does the ROM build, is it still the same ROM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from pydantic import BaseModel

from agent.errors import InvalidInput, NotAGitRepository
from agent.index.parse import language_of, parse_file
from agent.index.symbols import ParsedFile
from agent.repo import GitError, git

LOG_TAIL_LINES = 60
LOG_TAIL_BYTES = 256 * 1024  # read no more than this from the end of a command's output
PARSED_LANGS = ("c", "h")
_MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GNUMAKEFLAGS")  # a parent make's flags and jobserver stay out


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
    """The checks in the order they ran, and the verdict."""

    checks: list[Check]
    success: bool
    rom_changed: bool | None  # None: the compare did not run, or timed out
    keep_rom: bool

    def check(self, name: str) -> Check:
        """The check called `name` ("parse", "build" or "compare")."""
        return next(c for c in self.checks if c.name == name)


@dataclass
class ValidationConfig:
    """The commands that build the ROM and compare it with the original, and how long each may run."""

    build: list[str] = field(default_factory=lambda: ["make"])
    compare: list[str] = field(default_factory=lambda: ["make", "compare"])
    timeout_s: float = 600
    env: dict[str, str] = field(default_factory=dict)  # added to the commands' environment, e.g. MAKEFLAGS=-j8


def validate(worktree: Path, changed: Sequence[str], *, base_commit: str, keep_rom: bool,
             config: ValidationConfig) -> ValidationResult:
    """Run the parse, build and compare checks on `worktree`, whose repo-relative `changed` files were edited."""
    worktree = Path(worktree)
    if not worktree.is_dir():
        raise NotAGitRepository(f"{worktree} is not a directory; validation needs the edited worktree")
    if not config.build or not config.compare:
        raise InvalidInput("the build and compare commands must not be empty")
    for path in changed:
        if PurePosixPath(path).is_absolute() or ".." in PurePosixPath(path).parts:
            raise InvalidInput(f"changed path {path!r} is not relative to the worktree's top level")
    try:
        git(worktree, "rev-parse", "--verify", "--quiet", f"{base_commit}^{{commit}}")
    except GitError:
        raise InvalidInput(f"{base_commit!r} is not a commit of the repository at {worktree}") from None

    parse = parse_check(worktree, changed, base_commit)
    build = run_check("build", config.build, worktree, config)
    if build.passed:
        compare = run_check("compare", config.compare, worktree, config)
        rom_changed = None if compare.timed_out else not compare.passed
    else:
        compare = Check(name="compare", command=config.compare, passed=False, skipped_reason="the build failed")
        rom_changed = None
    success = parse.passed and build.passed and (compare.passed or not keep_rom)
    return ValidationResult(checks=[parse, build, compare], success=success, rom_changed=rom_changed,
                            keep_rom=keep_rom)


def parse_check(worktree: Path, changed: Sequence[str], base_commit: str) -> Check:
    """Count ERROR nodes in each changed C file at `base_commit` and now; fail if any file has more."""
    start = time.monotonic()
    lines, passed = [], True
    for path in dict.fromkeys(changed):  # each file once, in order
        if language_of(path) not in PARSED_LANGS:
            continue
        now = worktree / path
        before = _error_nodes(path, _at_commit(worktree, base_commit, path))
        after = _error_nodes(path, now.read_bytes() if now.is_file() else None)
        worse = after > before
        passed = passed and not worse
        lines.append(f"{path}: {before} -> {after} ERROR nodes" + (" (more than before)" if worse else ""))
    return Check(name="parse", command=None, passed=passed, seconds=time.monotonic() - start,
                 log_tail="\n".join(lines[-LOG_TAIL_LINES:]) or "no C files changed")


def run_check(name: str, command: list[str], worktree: Path, config: ValidationConfig) -> Check:
    """Run `command` in `worktree` in its own process group; past the timeout, SIGKILL the whole group."""
    env = {k: v for k, v in os.environ.items() if k not in _MAKE_VARS} | config.env
    start = time.monotonic()
    with tempfile.TemporaryFile() as log:
        try:
            proc = subprocess.Popen(command, cwd=worktree, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            return Check(name=name, command=command, passed=False, seconds=time.monotonic() - start,
                         log_tail=f"could not start {command[0]}: {exc.strerror or exc}")
        timed_out = False
        try:
            proc.wait(timeout=config.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # timed out, or this process was interrupted: the whole group goes
                _kill_group(proc)
        tail = _tail(log)
    if timed_out:
        tail = f"{tail}\n[killed after {config.timeout_s:g} s]".lstrip("\n")
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


def _at_commit(worktree: Path, commit: str, path: str) -> bytes | None:
    """The content of `path` at `commit`, or None when the commit has no such file."""
    if not git(worktree, "ls-tree", "-z", "--name-only", commit, "--", path):
        return None
    return git(worktree, "cat-file", "blob", f"{commit}:{path}")


def _error_nodes(path: str, data: bytes | None) -> int:
    """ERROR nodes left by cra's decomp-aware parse of `data` (0 for no file, or one the parser skips)."""
    if data is None:
        return 0
    parsed = parse_file(path, data)
    return parsed.error_nodes if isinstance(parsed, ParsedFile) else 0
