"""Where and how a checkout is built: one build environment for every caller, and the built trees it keeps.

A validation never builds in the user's checkout or in a run's worktree. It builds in a private copy of a
tree built once at the base commit and kept in the project's cra folder (`builds/`): the copy gets the edited
files and one incremental build. Trees are keyed by base commit (a tree is never reused at another commit:
generated files would be stale), pruned by count and age, and copies of killed processes are swept.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from string import Template

from agent import repo as git_repo
from agent.config import ValidationSettings, project_paths
from agent.errors import CraError, InvalidInput, MissingObjects
from agent.scratch import scratch_folder, sweep

COPY_PREFIX = "copy-"  # + the validating process's pid: a killed validation's copy is swept by the next one
BUILDING_PREFIX = "building-"  # + pid: a base tree being built, renamed into place when it is done
MAKE_VARS = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "GNUMAKEFLAGS")  # a parent make's flags and jobserver stay out
CHECKSUMS = "*.sha1"  # pret's `make compare` checks the ROM against the hash in rom.sha1 (ruby.sha1, ...)
BuildRunner = Callable[[list[str], Path], tuple[bool, str]]  # runs a command in a tree: (passed, log tail)


class MissingBuildTool(CraError):
    """A path the build needs (`[validation] carry`, e.g. pret's tools/agbcc) is not in the checkout."""

    exit_code = 2


@dataclass(frozen=True)
class BuildEnvironment:
    """How a checkout is built, the same for a run, the gate and the benchmarks: commands, jobs, carry, trees."""

    repo: Path  # the user's checkout: carried paths come from it, and base commits are read from its git
    settings: ValidationSettings
    trees: Path  # the project's built trees, under the cra home

    @classmethod
    def of(cls, repo: Path, settings: ValidationSettings, home: str | Path | None = None) -> BuildEnvironment:
        """The build environment of the checkout at `repo`, its trees in the project's cra folder."""
        repo = git_repo.require_repo(repo)
        return cls(repo=repo, settings=settings, trees=project_paths(repo, home).builds)

    def command(self, keep_rom: bool) -> list[str]:
        """One invocation: build and compare for a ROM-preserving task, build only for the others."""
        return list(self.settings.compare if keep_rom else self.settings.build)

    def environment(self) -> dict[str, str]:
        """The build's environment: this process's, without a parent make's flags, with the jobs and `env` set
        (a value may name this environment's variables: PATH = "/opt/old-gcc/bin:$PATH")."""
        env = {k: v for k, v in os.environ.items() if k not in MAKE_VARS}
        own = {name: Template(value).safe_substitute(env) for name, value in self.settings.env.items()}
        return env | {"MAKEFLAGS": f"-j{self.settings.jobs}"} | own

    def carried(self) -> list[tuple[str, Path]]:
        """Each carried path with its source in the checkout; a missing source is a clear error."""
        found = []
        for rel in self.settings.carry:
            source = self.repo / rel
            if not source.exists():
                hint = (" Build pret's agbcc (./build.sh in a clone of pret/agbcc) and run its ./install.sh with this "
                        "checkout's path" if PurePosixPath(rel).name == "agbcc" else
                        " Build or install it there first")
                raise MissingBuildTool(
                    f"the build needs {rel} in the checkout {self.repo}, and it is missing.{hint}; or drop it from "
                    "`carry` in the [validation] section of cra.toml if this build does without it")
            found.append((rel, source.resolve()))
        return found

    def link_carried(self, tree: Path) -> None:
        """Link every carried path into `tree` (read-only tools: linked, never copied or hard-linked)."""
        for rel, source in self.carried():
            target = tree / rel
            if target.is_symlink() or target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(source)


@dataclass(frozen=True)
class BaseTree:
    """A tree built at a base commit: where it is, how long the build took, and the ROMs it made (path -> SHA-1)."""

    commit: str
    path: Path
    roms: dict[str, str]
    build_s: float
    built_now: bool  # built by this call, not found in the cache
    log_tail: str = ""
    ok: bool = True


@dataclass(frozen=True)
class Prepared:
    """A private tree holding a base commit plus the edits, ready to build, and what it took to make it."""

    path: Path
    base: BaseTree | None  # None: nothing is cached (keep_trees = 0); the tree is the base commit, unbuilt
    prepare_s: float


def export_commit(repo: Path, commit: str, dest: Path) -> None:
    """Write the files of `commit` into `dest` (no .git, nothing of the user's index or working tree touched)."""
    dest.mkdir(parents=True, exist_ok=True)
    index = dest.parent / f".{dest.name}.index"  # a git index of its own, beside the tree (in its scratch folder)
    env = {**os.environ, **git_repo.GIT_ENV, "GIT_INDEX_FILE": str(index)}
    try:
        for args in (["read-tree", commit], ["checkout-index", "-a", "-f", f"--prefix={dest}/"]):
            proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env=env, check=False)
            if proc.returncode != 0:
                message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                error = MissingObjects if "missing" in " ".join(message) or "unable to read" in " ".join(message) \
                    else InvalidInput
                raise error(f"cannot write commit {commit[:12]} of {repo} into a build tree: "
                            f"{message[-1] if message else 'git failed'}")
    finally:
        index.unlink(missing_ok=True)


def rom_files(tree: Path, settings: ValidationSettings) -> dict[str, str | None]:
    """The ROM files of a tree with the SHA-1 its checksum file expects (None where unknown)."""
    if settings.rom:
        return dict.fromkeys(settings.rom)
    expected: dict[str, str | None] = {}
    for checksums in sorted(tree.glob(CHECKSUMS)):
        for line in checksums.read_text(encoding="utf-8", errors="replace").splitlines():
            digest, _, name = line.strip().partition(" ")
            name = name.strip().lstrip("*")
            if len(digest) == 40 and name:
                expected[name] = digest.lower()
    return expected


def rom_hashes(tree: Path, settings: ValidationSettings) -> dict[str, str]:
    """SHA-1 of each ROM file the tree has built."""
    hashes = {}
    for name in rom_files(tree, settings):
        path = tree / name
        if path.is_file():
            digest = hashlib.sha1()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[name] = digest.hexdigest()
    return hashes


def _meta_path(env: BuildEnvironment, commit: str) -> Path:
    return env.trees / f"{commit}.json"


@contextlib.contextmanager
def _locked(env: BuildEnvironment, commit: str, mode: int) -> Iterator[bool]:
    """A lock on one base commit's tree: exclusive to build or remove it, shared to copy it; False if refused."""
    env.trees.mkdir(parents=True, exist_ok=True)
    with open(env.trees / f"{commit}.lock", "a+b") as lock:
        try:
            fcntl.flock(lock, mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(env: BuildEnvironment, commit: str) -> BaseTree | None:
    """The kept tree built at `commit`, if there is one."""
    meta, tree = _meta_path(env, commit), env.trees / commit
    if not meta.is_file() or not tree.is_dir():
        return None
    data = json.loads(meta.read_text())
    return BaseTree(commit, tree, data["roms"], data["build_s"], built_now=False)


def base_tree(env: BuildEnvironment, commit: str, run_build: BuildRunner) -> BaseTree:
    """The tree built at `commit`: from the cache, else exported and built once (other processes wait for it)."""
    sweep(env.trees, BUILDING_PREFIX)
    with _locked(env, commit, fcntl.LOCK_EX):
        if (found := _cached(env, commit)) is not None:
            os.utime(found.path)  # last used: pruning removes the least recently used first
            return found
        with scratch_folder(BUILDING_PREFIX, env.trees) as building:
            tree = building / "tree"
            export_commit(env.repo, commit, tree)
            env.link_carried(tree)
            started = time.monotonic()
            passed, log_tail = run_build(env.settings.build, tree)
            build_s = time.monotonic() - started
            if not passed:
                return BaseTree(commit, tree, {}, build_s, built_now=True, log_tail=log_tail, ok=False)
            roms = rom_hashes(tree, env.settings)
            os.replace(tree, env.trees / commit)
            meta = _meta_path(env, commit)
            meta.with_suffix(".tmp").write_text(json.dumps({"commit": commit, "roms": roms, "build_s": build_s}))
            os.replace(meta.with_suffix(".tmp"), meta)
    prune(env, keep=commit)
    return BaseTree(commit, env.trees / commit, roms, build_s, built_now=True, log_tail=log_tail)


@contextlib.contextmanager
def prepared_tree(env: BuildEnvironment, commit: str, edited: Path, changed: Sequence[str],
                  run_build: BuildRunner) -> Iterator[Prepared]:
    """A private tree at `commit` with the `changed` files taken from `edited`, removed afterwards.

    With built trees kept, the copy starts from the tree built at `commit` (built first if it is not cached);
    with `keep_trees = 0`, it is the commit's files, unbuilt.
    """
    env.trees.mkdir(parents=True, exist_ok=True)
    with scratch_folder(COPY_PREFIX, env.trees) as scratch:
        started = time.monotonic()
        tree = scratch / "tree"
        base = None
        if env.settings.keep_trees:
            while base is None:
                base = base_tree(env, commit, run_build)
                if not base.ok:
                    yield Prepared(tree, base, time.monotonic() - started)
                    return
                with _locked(env, commit, fcntl.LOCK_SH):
                    if not base.path.is_dir():  # pruned by another process in between: build it again
                        base = None
                        continue
                    _copy_tree(base.path, tree)
        else:
            export_commit(env.repo, commit, tree)
            env.link_carried(tree)
        _take_edits(edited, tree, changed)
        yield Prepared(tree, base, time.monotonic() - started)


def _copy_tree(source: Path, dest: Path) -> None:
    """A full, private copy keeping times and links: copy-on-write where the filesystem can, never hard links."""
    proc = subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(dest)], capture_output=True, check=False)
    if proc.returncode != 0:  # a cp without GNU's flags
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(source, dest, symlinks=True)


def _take_edits(edited: Path, tree: Path, changed: Sequence[str]) -> None:
    """Copy each changed file from `edited` into `tree`, or delete it from `tree` when the edit removed it."""
    for rel in dict.fromkeys(changed):
        source, target = edited / rel, tree / rel
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)  # never write through a link the tree might hold
            shutil.copyfile(source, target)
            shutil.copymode(source, target)
        elif target.is_file() or target.is_symlink():
            target.unlink()


def prune(env: BuildEnvironment, keep: str | None = None) -> list[str]:
    """Remove built trees over `keep_trees` (least recently used first) or unused for `max_tree_age_days`."""
    if not env.trees.is_dir():
        return []
    trees = sorted((p for p in env.trees.glob("*.json") if (env.trees / p.stem).is_dir()),
                   key=lambda p: (env.trees / p.stem).stat().st_mtime, reverse=True)
    cutoff = time.time() - env.settings.max_tree_age_days * 86400
    removed = []
    for rank, meta in enumerate(trees):
        commit, tree = meta.stem, env.trees / meta.stem
        if commit == keep or (rank < env.settings.keep_trees and tree.stat().st_mtime >= cutoff):
            continue
        with _locked(env, commit, fcntl.LOCK_EX | fcntl.LOCK_NB) as free:
            if free:  # a tree being copied is left for the next prune
                meta.unlink(missing_ok=True)
                shutil.rmtree(tree, ignore_errors=True)
                removed.append(commit)  # the lock file stays: a process may be waiting on it
    return removed
