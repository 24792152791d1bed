"""Where an agent run edits code: its own git worktree on its own branch, never the user's working tree.

A run starts from the user's HEAD (plus, when asked, their uncommitted changes, committed first on the
run branch), edits the worktree, and ends as a branch `cra/run-<id>` and a patch file in the run's folder.
The patch reaches the user's working tree only through `apply_patch`, and only if it applies cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from agent import repo as git_repo
from agent.config import cra_home, project_paths
from agent.errors import InvalidInput, PatchConflict

BRANCH_PREFIX = "cra/run-"
PATCH_NAME = "change.patch"
CARRY_MESSAGE = "cra: uncommitted changes carried from the working tree"
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# cra commits as itself: never the user's identity, hooks or signing key.
IDENTITY = {
    "GIT_AUTHOR_NAME": "cra",
    "GIT_AUTHOR_EMAIL": "cra@localhost",
    "GIT_COMMITTER_NAME": "cra",
    "GIT_COMMITTER_EMAIL": "cra@localhost",
}
NO_HOOKS = ("-c", "core.hooksPath=/dev/null")
AS_CRA = (*NO_HOOKS, "-c", "user.name=cra", "-c", "user.email=cra@localhost", "-c", "commit.gpgSign=false")
# A patch `git apply` reads back whatever the user's diff settings (noprefix, textconv, external diff).
DIFF = ("diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv", "--no-relative",
        "--src-prefix=a/", "--dst-prefix=b/")

# `git apply --check` names a path that does not apply in one of these forms.
APPLY_ERROR = re.compile(
    r"^error: (?:patch failed: (?P<at>.+):\d+"
    r"|(?P<path>.+?): (?:patch does not apply|already exists in working directory|No such file or directory"
    r"|does not exist in index|does not match index|wrong type))$",
    re.MULTILINE,
)


@dataclass
class Workspace:
    """One run's worktree and branch, the commit it started from, and the folder its files live in."""

    run_id: str
    repo: Path
    path: Path
    branch: str
    base_commit: str
    included_dirty: list[str]
    run_dir: Path
    carried_commit: str | None = None

    @property
    def start(self) -> str:
        """The commit the run's own changes are measured from: the carried commit, else the base."""
        return self.carried_commit or self.base_commit


def create_workspace(
    repo: Path, run_id: str, *, home: str | Path | None = None, include_dirty: bool = False
) -> Workspace:
    """A new worktree of `repo`'s HEAD on branch `cra/run-<run_id>`, under the run's folder in the cra home."""
    if not RUN_ID.fullmatch(run_id):
        raise InvalidInput(f"run id {run_id!r} is not a safe name; use letters, digits, '-' and '_' (at most 64)")
    repo = git_repo.require_repo(repo)
    base = git_repo.head_commit(repo)
    branch = BRANCH_PREFIX + run_id
    run_dir = project_paths(repo, home).root / "runs" / run_id
    path = run_dir / "worktree"
    if path.is_relative_to(repo):
        raise InvalidInput(f"the cra home {cra_home(home)} is inside the checkout {repo}; choose a home outside it")
    if _branch_exists(repo, branch) or path.exists():
        raise InvalidInput(f"run {run_id} already has a workspace (branch {branch} or {path}); pick another run id")
    run_dir.mkdir(parents=True, exist_ok=True)
    ws = Workspace(run_id=run_id, repo=repo, path=path, branch=branch, base_commit=base, included_dirty=[],
                   run_dir=run_dir)
    try:
        git_repo.git(repo, *NO_HOOKS, "worktree", "add", "-q", "-b", branch, str(path), base)
        if include_dirty:
            ws.included_dirty = _carry_dirty(repo, base, path)
            if ws.included_dirty and _commit(path, CARRY_MESSAGE):
                ws.carried_commit = git_repo.head_commit(path)
    except BaseException:
        remove_worktree(ws, keep_branch=False)
        raise
    return ws


def dirty_paths(repo: Path) -> list[str]:
    """The user's uncommitted paths: staged, unstaged and untracked (not ignored), relative to HEAD."""
    repo = git_repo.require_repo(repo)
    git_repo.head_commit(repo)
    return sorted(git_repo.dirty_files(repo))


def changed_files(ws: Workspace) -> list[str]:
    """Files the run changed in its worktree since its start, committed or not, new files included."""
    return sorted(git_repo.changed_since(ws.path, ws.start))


def finish(ws: Workspace, message: str) -> Path | None:
    """Commit the run's changes on its branch and write them as `run_dir/change.patch`; None if nothing changed."""
    _commit(ws.path, message)
    patch = git_repo.git(ws.path, *DIFF, ws.start, "HEAD")
    if not patch:
        return None
    target = ws.run_dir / PATCH_NAME
    tmp = target.with_name(f".{PATCH_NAME}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(patch)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def remove_worktree(ws: Workspace, *, keep_branch: bool = True) -> None:
    """Remove the run's worktree (its branch and patch stay for review unless `keep_branch` is False)."""
    _remove(ws.repo, ws.path, None if keep_branch else ws.branch)


def discard(repo: Path, run_id: str, home: str | Path | None = None) -> None:
    """Remove what a killed run left in `repo`: its worktree and its branch (its run folder's other files stay)."""
    if RUN_ID.fullmatch(run_id) and (Path(repo) / ".git").exists():
        _remove(Path(repo), project_paths(Path(repo), home).root / "runs" / run_id / "worktree", BRANCH_PREFIX + run_id)


def _remove(repo: Path, worktree: Path, branch: str | None) -> None:
    """Remove a worktree of `repo`, and `branch` with it when one is given."""
    _git_quiet(repo, "worktree", "remove", "--force", "--force", str(worktree))
    shutil.rmtree(worktree, ignore_errors=True)
    _git_quiet(repo, "worktree", "prune")
    if branch and _branch_exists(repo, branch):
        _git_quiet(repo, "branch", "-D", branch)


def apply_patch(repo: Path, patch: Path) -> list[str]:
    """Apply a run's patch to the user's working tree if it applies cleanly; the paths it changed."""
    repo = git_repo.require_repo(repo)
    patch = Path(patch).expanduser().resolve()
    if not patch.is_file():
        raise InvalidInput(f"no patch file at {patch}; pass the change.patch a finished run wrote in its run folder")
    proc = _try_git(repo, "apply", "--check", str(patch))
    if proc.returncode != 0:
        raise PatchConflict(_conflict_message(repo, patch, proc.stderr.decode("utf-8", "surrogateescape")))
    paths = _patch_paths(repo, patch)
    git_repo.git(repo, "apply", str(patch))
    return paths


def _carry_dirty(repo: Path, base: str, worktree: Path) -> list[str]:
    """Copy the user's uncommitted state into the worktree: tracked changes as a diff, untracked files as copies."""
    tracked = _paths(git_repo.git(repo, "diff", "--name-only", "-z", "--no-renames", base))
    if tracked:
        diff = git_repo.git(repo, *DIFF, base)
        git_repo.git(worktree, "apply", "--whitespace=nowarn", "-", input=diff)
    untracked = [p for p in _paths(git_repo.git(repo, "ls-files", "-z", "--others", "--exclude-standard"))
                 if not p.endswith("/")]  # a nested repository is listed as a folder: not carried
    for rel in untracked:
        dest = worktree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, dest, follow_symlinks=False)
    return sorted(set(tracked) | set(untracked))


def _commit(worktree: Path, message: str) -> bool:
    """Stage everything in `worktree` and commit it as cra; False when there was nothing to commit."""
    git_repo.git(worktree, "add", "-A")
    if not git_repo.git(worktree, "diff", "--cached", "--name-only", "-z"):
        return False
    proc = _try_git(worktree, *AS_CRA, "commit", "-q", "--no-verify", "-m", message, env=IDENTITY)
    if proc.returncode != 0:
        raise git_repo.GitError(f"git commit failed in {worktree}: {proc.stderr.decode(errors='replace').strip()}")
    return True


def _try_git(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git in `repo` and hand back the finished process, whatever its exit status."""
    return subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True,
                          env={**os.environ, **git_repo.GIT_ENV, **(env or {})})


def _git_quiet(repo: Path, *args: str) -> bool:
    """Run a git bookkeeping command whose failure is expected at times (already removed, already gone)."""
    return _try_git(repo, *args).returncode == 0


def _paths(out: bytes) -> list[str]:
    """The paths of a NUL-separated git listing (`-z`)."""
    return [p.decode("utf-8", "surrogateescape") for p in out.split(b"\0") if p]


def _branch_exists(repo: Path, branch: str) -> bool:
    return _git_quiet(repo, "rev-parse", "--verify", "-q", f"refs/heads/{branch}")


def _patch_paths(repo: Path, patch: Path) -> list[str]:
    """Every path the patch touches (both sides of a rename), from `git apply --numstat -z`."""
    tokens = git_repo.git(repo, "apply", "--numstat", "-z", str(patch)).split(b"\0")
    paths: set[str] = set()
    i = 0
    while i < len(tokens):
        fields = tokens[i].split(b"\t", 2)
        if len(fields) == 3 and fields[2]:
            paths.add(fields[2].decode("utf-8", "surrogateescape"))
        elif len(fields) == 3:  # a rename: old and new path follow as their own tokens
            paths.update(t.decode("utf-8", "surrogateescape") for t in tokens[i + 1:i + 3])
            i += 2
        i += 1
    return sorted(paths)


def _conflict_message(repo: Path, patch: Path, stderr: str) -> str:
    """What does not apply, and what the user can do about it."""
    files = sorted({m.group("at") or m.group("path") for m in APPLY_ERROR.finditer(stderr)})
    what = ", ".join(files) if files else stderr.strip()
    branch = BRANCH_PREFIX + patch.parent.name
    review = (f"or review the run's branch {branch} instead (git log -p {branch})"
              if _branch_exists(repo, branch) else f"or review the patch {patch} by hand")
    return (f"the patch {patch} does not apply to {repo}: conflicting changes in {what}; nothing was changed. "
            f"Commit or stash your changes and apply it again, {review}")
