"""Run workspaces: a worktree and branch per run, the user's checkout untouched, patches applied only when asked."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from agent import workspace
from agent.errors import EmptyRepository, InvalidInput, NotAGitRepository, PatchConflict
from agent.workspace import (
    CARRY_MESSAGE,
    apply_patch,
    changed_files,
    create_workspace,
    dirty_paths,
    finish,
    remove_worktree,
)
from tests.fixtures.decomp import DecompRepo

OLD_LINE = "static const u16 sKeyRepeatDelays[] = {40, 5};"
NEW_LINE = "static const u16 sKeyRepeatDelays[] = {40, 6};"


def git(repo: Path, *args: str) -> str:
    """Run git in a test repository and return its stdout."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def snapshot(repo: Path) -> dict[str, object]:
    """Everything the user sees of their checkout: file hashes, status, HEAD, branch, config."""
    files = {
        p.relative_to(repo).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(repo.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(repo).parts
    }
    return {
        "files": files,
        "status": git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
        "head": git(repo, "rev-parse", "HEAD"),
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "config": (repo / ".git" / "config").read_bytes(),
    }


def edit_run(ws: workspace.Workspace) -> None:
    """What an agent run does in its worktree: change a line, add a file, delete a file."""
    main_c = ws.path / "src" / "main.c"
    main_c.write_text(main_c.read_text().replace(OLD_LINE, NEW_LINE))
    (ws.path / "src" / "run_added.c").write_text('#include "global.h"\n')
    (ws.path / "src" / "window.c").unlink()


def make_user_dirty(repo: Path) -> None:
    """The user's uncommitted state: a modified, a deleted, an untracked and an ignored file."""
    (repo / "README.md").write_text((repo / "README.md").read_text() + "\nLocal notes.\n")
    (repo / "src" / "task.c").unlink()
    (repo / "src" / "user_new.c").write_text("/* work in progress */\n")
    (repo / "build").mkdir(exist_ok=True)
    (repo / "build" / "rom.elf").write_bytes(b"\x7fELF")


def test_user_checkout_is_untouched(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    make_user_dirty(repo)
    before = snapshot(repo)

    ws = create_workspace(repo, "r1")
    assert ws.branch == "cra/run-r1"
    assert ws.base_commit == decomp_repo.head
    assert ws.repo == repo.resolve()
    assert ws.run_dir == isolated_cra_home.resolve() / "projects" / ws.run_dir.parent.parent.name / "runs" / "r1"
    assert ws.path == ws.run_dir / "worktree"
    assert not ws.path.is_relative_to(repo.resolve())
    assert git(ws.path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "cra/run-r1"

    edit_run(ws)
    assert changed_files(ws) == ["src/main.c", "src/run_added.c", "src/window.c"]
    patch = finish(ws, "Make key repeat slower")
    remove_worktree(ws)

    assert snapshot(repo) == before
    assert patch == ws.run_dir / "change.patch" and patch.is_file()
    assert not ws.path.exists()
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%s", "cra/run-r1").strip() == (
        "cra <cra@localhost>|cra <cra@localhost>|Make key repeat slower"
    )


def test_user_hooks_never_run(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    hooks = repo / ".git" / "hooks"
    for name in ("pre-commit", "post-checkout", "commit-msg", "post-commit"):
        (hooks / name).write_text(f"#!/bin/sh\necho ran >> '{hooks}/{name}.ran'\nexit 1\n")
        (hooks / name).chmod(0o755)
    (repo / "notes.txt").write_text("dirty\n")

    ws = create_workspace(repo, "hooked", include_dirty=True)
    edit_run(ws)
    assert finish(ws, "change") is not None
    assert not list(hooks.glob("*.ran"))


def test_include_dirty_carries_the_users_changes(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    make_user_dirty(repo)
    before = snapshot(repo)

    ws = create_workspace(repo, "dirty", include_dirty=True)
    assert ws.included_dirty == ["README.md", "src/task.c", "src/user_new.c"]
    assert (ws.path / "README.md").read_text() == (repo / "README.md").read_text()
    assert not (ws.path / "src" / "task.c").exists()
    assert (ws.path / "src" / "user_new.c").read_text() == "/* work in progress */\n"
    assert not (ws.path / "build").exists()  # ignored files stay behind
    assert git(ws.path, "log", "-1", "--format=%s%n%P", "HEAD").split() == [*CARRY_MESSAGE.split(), ws.base_commit]
    assert git(ws.path, "status", "--porcelain") == ""
    assert changed_files(ws) == []

    edit_run(ws)
    assert changed_files(ws) == ["src/main.c", "src/run_added.c", "src/window.c"]
    patch = finish(ws, "Make key repeat slower")
    assert patch is not None
    touched = {line.split(" b/")[-1] for line in patch.read_text().splitlines() if line.startswith("diff --git")}
    assert touched == {"src/main.c", "src/run_added.c", "src/window.c"}
    remove_worktree(ws)
    assert snapshot(repo) == before


def test_without_include_dirty_the_worktree_is_head(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    make_user_dirty(repo)
    assert dirty_paths(repo) == ["README.md", "src/task.c", "src/user_new.c"]

    ws = create_workspace(repo, "clean")
    assert ws.included_dirty == [] and ws.carried_commit is None
    assert (ws.path / "README.md").read_bytes() == git(repo, "show", "HEAD:README.md").encode()
    assert (ws.path / "src" / "task.c").is_file()
    assert not (ws.path / "src" / "user_new.c").exists()
    assert git(ws.path, "rev-parse", "HEAD").strip() == ws.base_commit
    assert changed_files(ws) == []


def test_patch_applies_to_a_clean_user_tree(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    ws = create_workspace(repo, "apply")
    edit_run(ws)
    (ws.path / "graphics" / "wallclock" / "hand.4bpp").write_bytes(bytes(range(256)))
    expected = {p: (ws.path / p).read_bytes() for p in ("src/main.c", "src/run_added.c", "graphics/wallclock/hand.4bpp")}
    patch = finish(ws, "Edit")
    remove_worktree(ws)
    assert patch is not None

    changed = apply_patch(repo, patch)
    assert changed == ["graphics/wallclock/hand.4bpp", "src/main.c", "src/run_added.c", "src/window.c"]
    assert {p: (repo / p).read_bytes() for p in expected} == expected
    assert not (repo / "src" / "window.c").exists()
    assert git(repo, "rev-parse", "HEAD").strip() == ws.base_commit  # applied to the tree, not committed


def test_apply_patch_refuses_conflicting_user_edits(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    ws = create_workspace(repo, "conflict")
    edit_run(ws)
    patch = finish(ws, "Edit")
    remove_worktree(ws)
    assert patch is not None
    main_c = repo / "src" / "main.c"
    main_c.write_text(main_c.read_text().replace(OLD_LINE, "static const u16 sKeyRepeatDelays[] = {30, 5};"))
    before = snapshot(repo)

    with pytest.raises(PatchConflict) as err:
        apply_patch(repo, patch)
    message = str(err.value)
    assert "src/main.c" in message and "cra/run-conflict" in message and "stash" in message
    assert snapshot(repo) == before


def test_apply_patch_refuses_a_missing_patch(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no patch file"):
        apply_patch(decomp_repo.path, tmp_path / "nope.patch")


def test_finish_without_changes_writes_no_patch(decomp_repo: DecompRepo) -> None:
    ws = create_workspace(decomp_repo.path, "idle")
    assert finish(ws, "nothing") is None
    assert not (ws.run_dir / "change.patch").exists()
    assert git(ws.path, "rev-parse", "HEAD").strip() == ws.base_commit


def test_two_workspaces_coexist(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    a = create_workspace(repo, "a")
    b = create_workspace(repo, "b")
    assert a.path != b.path and a.run_dir.parent == b.run_dir.parent
    (a.path / "README.md").write_text("a\n")
    (b.path / "README.md").write_text("b\n")
    patch_a, patch_b = finish(a, "a"), finish(b, "b")
    assert patch_a is not None and patch_b is not None
    assert git(repo, "show", "cra/run-a:README.md") == "a\n"
    assert git(repo, "show", "cra/run-b:README.md") == "b\n"
    assert patch_a.read_text() != patch_b.read_text()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 3


def test_a_run_id_is_used_once(decomp_repo: DecompRepo) -> None:
    create_workspace(decomp_repo.path, "once")
    with pytest.raises(InvalidInput, match="already has a workspace"):
        create_workspace(decomp_repo.path, "once")


@pytest.mark.parametrize("run_id", ["", "../escape", "a/b", "two words", "x" * 65, "semi;colon"])
def test_a_bad_run_id_is_refused(decomp_repo: DecompRepo, run_id: str) -> None:
    with pytest.raises(InvalidInput, match="not a safe name"):
        create_workspace(decomp_repo.path, run_id)


def test_remove_worktree_twice(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    ws = create_workspace(repo, "twice")
    remove_worktree(ws)
    remove_worktree(ws)
    assert not ws.path.exists()
    assert git(repo, "rev-parse", "--verify", "cra/run-twice").strip() == ws.base_commit
    remove_worktree(ws, keep_branch=False)
    assert "cra/run-twice" not in git(repo, "branch", "--list")


def test_failed_creation_leaves_no_worktree_or_branch(decomp_repo: DecompRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = decomp_repo.path
    (repo / "notes.txt").write_text("dirty\n")

    def broken(*_: object) -> list[str]:
        raise OSError("disk full")

    monkeypatch.setattr(workspace, "_carry_dirty", broken)
    with pytest.raises(OSError, match="disk full"):
        create_workspace(repo, "broken", include_dirty=True)
    assert "cra/run-broken" not in git(repo, "branch", "--list")
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    monkeypatch.undo()
    assert create_workspace(repo, "broken", include_dirty=True).included_dirty == ["notes.txt"]


def test_not_a_repository_or_empty(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository):
        create_workspace(plain, "r")
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(EmptyRepository):
        create_workspace(empty, "r")
    with pytest.raises(EmptyRepository):
        dirty_paths(empty)
