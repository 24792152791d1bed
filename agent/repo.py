"""Read-only git access to the user's repository: what is tracked, what changed, which commit is checked out."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from agent.errors import (
    CraError,
    EmptyRepository,
    InvalidInput,
    MissingObjects,
    NotAGitRepository,
)

# Never let git reach a promisor remote for a missing object: fail fast instead.
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_NO_LAZY_FETCH": "1", "LC_ALL": "C"}


class GitError(CraError):
    """A git command failed."""


def git(repo: Path, *args: str, check: bool = True, input: bytes | None = None) -> bytes:
    """Run git in `repo` and return its stdout bytes; raise GitError (or MissingObjects) on failure."""
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        input=input,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        if "missing" in err or "promisor" in err or "unable to read" in err or "bad object" in err:
            raise MissingObjects(f"git {args[0]} in {repo}: {err}")
        raise GitError(f"git {' '.join(args[:3])} failed in {repo}: {err}")
    return proc.stdout


def author_dates(repo: Path, shas: Iterable[str]) -> dict[str, str]:
    """Each commit's author date (ISO 8601, the author's offset); commits `repo` does not have are left out."""
    revs = "\n".join(shas)
    if not revs:
        return {}
    out = git(repo, "log", "--no-walk=unsorted", "--ignore-missing", "--stdin", "--format=%H %aI", input=revs.encode())
    return dict(line.split(" ", 1) for line in out.decode().splitlines())


def require_repo(path: Path) -> Path:
    """The top level of the git work tree containing `path`, or NotAGitRepository."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise NotAGitRepository(f"{path} is not a directory; pass the path of a git checkout (e.g. ./pokeemerald)")
    proc = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True, env={**os.environ, **GIT_ENV}
    )
    if proc.returncode != 0:
        raise NotAGitRepository(f"{path} is not inside a git repository; run `git init` or pass a git checkout")
    return Path(proc.stdout.decode().strip()).resolve()


def head_commit(repo: Path) -> str:
    """The sha of HEAD, or EmptyRepository when there is no commit yet."""
    proc = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD^{commit}"],
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )
    if proc.returncode != 0:
        raise EmptyRepository(f"{repo} has no commits yet; commit something before indexing")
    return proc.stdout.decode().strip()


def resolve_commit(repo: Path, rev: str) -> str:
    """The sha of the commit `rev` names; InvalidInput when it names none."""
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", f"{rev}^{{commit}}"],
                          capture_output=True, env={**os.environ, **GIT_ENV})
    if proc.returncode != 0:
        raise InvalidInput(f"{rev!r} names no commit of {repo}; give a branch, tag or commit sha")
    return proc.stdout.decode().strip()


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    """Whether commit `older` is reachable from `newer` (a commit is its own ancestor)."""
    return _git_quiet(repo, "merge-base", "--is-ancestor", older, newer)[0]


def printable_path(path: str) -> str:
    """A path git gave as bytes that are not UTF-8, with those bytes written as \\xNN escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _z(out: bytes) -> list[str]:
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


def work_tree_files(repo: Path) -> list[str]:
    """Tracked files plus untracked files git does not ignore, repo-relative."""
    return sorted(set(_z(git(repo, "ls-files", "-z", "--cached", "--others", "--exclude-standard"))))


def changed_since(repo: Path, commit: str) -> set[str]:
    """Paths whose work-tree state may differ from `commit`: committed since, edited, or untracked."""
    changed = _z(git(repo, "diff", "--name-only", "-z", "--no-renames", commit))
    untracked = _z(git(repo, "ls-files", "-z", "--others", "--exclude-standard"))
    return set(changed) | set(untracked)


def dirty_files(repo: Path) -> set[str]:
    """Paths with uncommitted changes (staged, unstaged or untracked) relative to HEAD."""
    return changed_since(repo, "HEAD")


def file_at(repo: Path, commit: str, path: str) -> bytes | None:
    """The content of `path` at `commit`, or None when the commit has no such file."""
    if not git(repo, "ls-tree", "-z", "--name-only", commit, "--", path):
        return None
    return git(repo, "cat-file", "blob", f"{commit}:{path}")


def write_files_at(repo: Path, commit: str, paths: Iterable[str], folder: Path) -> None:
    """Write each of `paths` as it is at `commit` into `folder` (paths the commit lacks are left out)."""
    for path in paths:
        if (data := file_at(repo, commit, path)) is not None:
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(data)


def safe_relative(path: str) -> bool:
    """Whether `path` is relative and stays inside the folder it is relative to (no `..`)."""
    pure = PurePosixPath(path)
    return bool(path) and not pure.is_absolute() and ".." not in pure.parts


def blob_sha(data: bytes) -> str:
    """The git blob id of `data`, as `git hash-object` computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _git_quiet(repo: Path, *args: str) -> tuple[bool, str]:
    proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, env={**os.environ, **GIT_ENV}, check=False)
    return proc.returncode == 0, proc.stderr.decode(errors="replace").strip()


@contextmanager
def temporary_worktree(repo: Path, where: Path) -> Iterator[Path]:
    """A detached worktree of `repo` at `where` (nothing checked out yet), removed and pruned afterwards."""
    _git_quiet(repo, "worktree", "prune")  # forget the worktree of an earlier run that was killed
    git(repo, "worktree", "add", "--detach", "--no-checkout", str(where), "HEAD")
    try:
        yield where
    finally:
        _git_quiet(repo, "worktree", "remove", "--force", str(where))
        shutil.rmtree(where, ignore_errors=True)
        _git_quiet(repo, "worktree", "prune")


def checkout_detached(worktree: Path, commit: str) -> str | None:
    """Move a worktree to `commit`; git's last message on failure (missing blobs in old history), else None."""
    ok, err = _git_quiet(worktree, "checkout", "--force", "--detach", "--quiet", commit)
    if not ok:
        return err.splitlines()[-1] if err else "unknown error"
    _git_quiet(worktree, "clean", "-fdq")
    return None
