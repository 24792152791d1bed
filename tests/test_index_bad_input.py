"""Bad input to the indexer: not a repository, no commits, odd bytes, symlinks out of the tree, partial
clones, an indexer killed half-way, and two indexers at once. Each ends in a clear error or a recorded
skip, never a traceback, and never in a broken index."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent import repo as git_repo
from agent import retrieval
from agent import store as cra_store
from agent.cli import app
from agent.config import project_paths
from agent.errors import (
    EmptyRepository,
    IndexBusy,
    MissingObjects,
    NotAGitRepository,
    StoreBusy,
    UnknownSymbol,
)
from agent.index import reader
from agent.index.build import IndexReport, index_repo
from tests.fixtures.decomp import DecompRepo

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
runner = CliRunner()

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def git(repo: Path, *args: str, env: dict | None = None) -> str:
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                          capture_output=True, text=True, env=env).stdout


def index(repo: Path, **kw) -> IndexReport:
    kw.setdefault("embed", False)
    return index_repo(repo, **kw)


@contextmanager
def store(repo: Path, home: Path | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(project_paths(repo, home).store), read_only=True)
    try:
        yield con
    finally:
        con.close()


def rows(repo: Path, sql: str, params: list | None = None, home: Path | None = None) -> list[tuple]:
    with store(repo, home) as con:
        return con.execute(sql, params or []).fetchall()


def skipped(repo: Path, home: Path | None = None) -> dict[str, str]:
    return dict(rows(repo, "SELECT path, reason FROM skipped_files", home=home))


def indexed_paths(repo: Path, home: Path | None = None) -> set[str]:
    return {r[0] for r in rows(repo, "SELECT path FROM files", home=home)}


def recorded_commit(repo: Path, home: Path | None = None) -> str:
    [(sha,)] = rows(repo, "SELECT commit_sha FROM index_state", home=home)
    return sha


def squash(text: str) -> str:
    """Text without whitespace: rich may wrap long paths in error messages."""
    return "".join(text.split())


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250"})


def cli_subprocess(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m agent.cli ...` as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CRA_HOME": str(home), "COLUMNS": "250"}
    return subprocess.run([PYTHON, "-m", "agent.cli", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "error:" in proc.stderr, proc.stderr
    for needle in needles:
        assert squash(needle) in squash(proc.stderr), proc.stderr


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


# ---------------------------------------------------------------------------------------------
# Not a repository, no commits, nothing indexable
# ---------------------------------------------------------------------------------------------


def test_not_a_git_repository(tmp_path: Path, isolated_cra_home: Path) -> None:
    plain = tmp_path / "not-a-repo"
    (plain / "src").mkdir(parents=True)
    (plain / "src/main.c").write_text("void AgbMain(void) {}\n")
    assert subprocess.run(["git", "-C", str(plain), "rev-parse"], capture_output=True).returncode != 0

    with pytest.raises(NotAGitRepository) as exc:
        index(plain)
    assert str(plain) in str(exc.value)
    with pytest.raises(NotAGitRepository) as exc:
        index(tmp_path / "does-not-exist")
    assert "does-not-exist" in str(exc.value)

    result = cli("index", plain, "--no-embed")
    assert result.exit_code != 0
    assert "error:" in result.stderr
    assert squash(str(plain)) in squash(result.stderr)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    # Nothing was created for it in the cra home.
    assert not list(isolated_cra_home.glob("projects/*"))


def test_not_a_git_repository_subprocess(tmp_path: Path, isolated_cra_home: Path) -> None:
    plain = tmp_path / "plain-dir"
    plain.mkdir()
    proc = cli_subprocess("index", plain, "--no-embed", home=isolated_cra_home)
    assert_clean_failure(proc, str(plain))
    assert proc.returncode == 1


def test_empty_repository(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(EmptyRepository) as exc:
        index(empty)
    assert "no commits" in str(exc.value)
    # Staged files do not make a commit.
    (empty / "main.c").write_text("void AgbMain(void) {}\n")
    git(empty, "add", "main.c")
    with pytest.raises(EmptyRepository):
        index(empty)
    result = cli("index", empty, "--no-embed")
    assert result.exit_code != 0
    assert "error:" in result.stderr and "no commits" in result.stderr


def test_repository_without_indexable_files(tmp_path: Path) -> None:
    repo = tmp_path / "docs-only"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README.md").write_text("# notes\n")
    (repo / "tiles.4bpp").write_bytes(bytes(range(256)))
    commit_all(repo, "docs")
    report = index(repo)
    assert report.full and report.parsed == 0 and report.symbols == 0
    assert recorded_commit(repo) == git(repo, "rev-parse", "HEAD").strip()
    assert retrieval.search(repo, "anything at all").files == []
    with pytest.raises(UnknownSymbol):
        reader.lookup_symbol(repo, "AgbMain")


# ---------------------------------------------------------------------------------------------
# Odd bytes and odd names
# ---------------------------------------------------------------------------------------------

LATIN1_C = b"// Pok\xe9mon Fixture: the \xe9 is Latin-1, not UTF-8\nvoid LatinOneFunction(void)\n{\n}\n"
BINARY_C = bytes((i * 37 + 11) % 256 for i in range(4096))  # has NUL and control bytes
UTF16_C = "void WideFunction(void) {}\n".encode("utf-16")


def test_non_utf8_and_binary_c_files(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    (repo / "src/latin1.c").write_bytes(LATIN1_C)
    (repo / "src/blob.c").write_bytes(BINARY_C)
    (repo / "src/wide.c").write_bytes(UTF16_C)
    commit_all(repo, "odd files")

    report = index(repo)
    assert report.skipped >= 2
    assert "src/latin1.c" in indexed_paths(repo)
    assert [i.symbol.path for i in reader.lookup_symbol(repo, "LatinOneFunction")] == ["src/latin1.c"]
    reasons = skipped(repo)
    assert "binary" in reasons.get("src/blob.c", ""), reasons
    assert reasons.get("src/wide.c"), reasons
    assert not {"src/blob.c", "src/wide.c"} & indexed_paths(repo)

    # The same files as uncommitted edits of an indexed file, through the incremental path.
    (repo / "src/task.c").write_bytes(BINARY_C)
    (repo / "src/sprite.c").write_bytes(LATIN1_C.replace(b"LatinOneFunction", b"LatinTwoFunction"))
    report = index(repo)
    assert not report.full
    assert "binary" in skipped(repo).get("src/task.c", "")
    assert "src/task.c" not in indexed_paths(repo)
    assert not rows(repo, "SELECT id FROM symbols WHERE path = 'src/task.c'")
    assert [i.symbol.path for i in reader.lookup_symbol(repo, "LatinTwoFunction")] == ["src/sprite.c"]
    assert retrieval.search(repo, "wall clock").files

    # Restoring the file takes it out of the skipped list again.
    git(repo, "checkout", "--", "src/task.c")
    index(repo)
    assert "src/task.c" not in skipped(repo)
    assert "src/task.c" in indexed_paths(repo)


def test_pathological_c_file_does_not_abort_the_index(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    depth = 1000
    (repo / "src/deep_if.c").write_bytes(b"#if A\n" * depth + b"void DeepIfFunction(void)\n{\n}\n" + b"#endif\n" * depth)
    commit_all(repo, "deeply nested #if")
    report = index(repo)  # parsed, or skipped with a reason: never an exception
    assert report.commit == git(repo, "rev-parse", "HEAD").strip()
    assert "src/deep_if.c" in indexed_paths(repo) or skipped(repo).get("src/deep_if.c")
    assert [i.symbol.path for i in reader.lookup_symbol(repo, "InitWallClock")] == ["src/wallclock.c"]


def test_awkward_file_names(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    (repo / "src/it's here.c").write_text("void QuotedPathFunction(void)\n{\n}\n")
    commit_all(repo, "a file name with a quote and a space")
    index(repo)
    assert [i.symbol.path for i in reader.lookup_symbol(repo, "QuotedPathFunction")] == ["src/it's here.c"]
    # Incremental: its rows are deleted and re-added by path (SQL quoting in DuckDB and LanceDB).
    (repo / "src/it's here.c").write_text("void QuotedPathRenamed(void)\n{\n}\n")
    report = index(repo)
    assert report.parsed == 1
    with pytest.raises(UnknownSymbol):
        reader.lookup_symbol(repo, "QuotedPathFunction")
    found = retrieval.search(repo, "QuotedPathRenamed", k=20)
    assert ("QuotedPathRenamed", "src/it's here.c") in {(s.name, s.path) for s in found.symbols}
    assert not [s for s in retrieval.search(repo, "QuotedPathFunction", k=50).symbols
                if s.name == "QuotedPathFunction"]


def test_non_utf8_file_name(decomp_repo: DecompRepo) -> None:
    repo = decomp_repo.path
    name = b"src/pok\xe9mon.c"  # a Latin-1 file name, as old Windows tools write them
    with open(os.path.join(os.fsencode(repo), name), "wb") as fh:
        fh.write(b"void LatinNamedFunction(void)\n{\n}\n")
    commit_all(repo, "Latin-1 file name")
    report = index(repo)  # indexed under some readable name, or skipped with a reason: no crash
    assert report.commit == git(repo, "rev-parse", "HEAD").strip()
    assert retrieval.search(repo, "wall clock").files


# ---------------------------------------------------------------------------------------------
# Symlinks
# ---------------------------------------------------------------------------------------------

SECRET = "CraSecretCanaryToken"


def test_symlinks_out_of_the_repo_are_not_followed(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    repo = decomp_repo.path
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.c").write_text(f"void {SECRET}Function(void)\n{{\n}}\n// {SECRET}\n")
    (outside / "dir/inner.c").write_text(f"void {SECRET}Inner(void)\n{{\n}}\n")
    os.symlink(outside / "secret.c", repo / "src/secret.c")
    os.symlink("/etc/passwd", repo / "include/passwd.h")
    os.symlink(outside / "dir", repo / "src/linked")
    commit_all(repo, "symlinks")
    # A tracked file whose directory is later swapped for a symlink out of the tree.
    (repo / "src/sub").mkdir()
    (repo / "src/sub/inner.c").write_text("void InnerFunction(void)\n{\n}\n")
    commit_all(repo, "src/sub")
    (repo / "src/sub/inner.c").unlink()
    (repo / "src/sub").rmdir()
    os.symlink(outside / "dir", repo / "src/sub")

    index(repo)
    reasons = skipped(repo)
    for link in ("src/secret.c", "include/passwd.h", "src/sub/inner.c"):
        assert link in reasons and ("symlink" in reasons[link] or "outside" in reasons[link]), reasons
    paths = indexed_paths(repo)
    assert not {"src/secret.c", "include/passwd.h", "src/sub/inner.c"} & paths
    assert not [p for p in paths if p.startswith(("src/linked", "src/sub"))]
    _assert_secret_not_indexed(repo, {"src/secret.c", "include/passwd.h", "src/sub/inner.c"})

    # Incremental: an indexed file replaced by a symlink out of the tree.
    (repo / "src/wallclock.c").unlink()
    os.symlink(outside / "secret.c", repo / "src/wallclock.c")
    report = index(repo)
    assert not report.full
    assert "src/wallclock.c" in skipped(repo)
    assert "src/wallclock.c" not in indexed_paths(repo)
    assert "src/wallclock.c" not in {i.symbol.path for i in reader.lookup_symbol(repo, "InitWallClock")}
    _assert_secret_not_indexed(repo, {"src/secret.c", "include/passwd.h", "src/sub/inner.c", "src/wallclock.c"})


def _assert_secret_not_indexed(repo: Path, links: set[str]) -> None:
    for name in (f"{SECRET}Function", f"{SECRET}Inner", "root"):
        with pytest.raises(UnknownSymbol):
            reader.lookup_symbol(repo, name)
    assert not rows(repo, "SELECT id FROM symbols WHERE name ILIKE ? OR detail ILIKE ?", [f"%{SECRET}%"] * 2)
    for ranker in ("hybrid", "bm25"):
        found = retrieval.search(repo, f"{SECRET}Function root nologin", k=50, ranker=ranker)
        assert not {f.path for f in found.files} & links, ranker
        assert not [s for s in found.symbols if SECRET in s.name]


# ---------------------------------------------------------------------------------------------
# Partial clones
# ---------------------------------------------------------------------------------------------


def missing_objects(repo: Path) -> set[str]:
    """Objects a partial clone lacks (listing them never fetches)."""
    out = subprocess.run(["git", "-C", str(repo), "rev-list", "--objects", "--missing=print", "--all"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "GIT_NO_LAZY_FETCH": "1"}).stdout
    return {line[1:].split()[0] for line in out.splitlines() if line.startswith("?")}


@pytest.fixture
def partial_clone(decomp_repo: DecompRepo, tmp_path: Path) -> Path:
    git(decomp_repo.path, "config", "uploadpack.allowFilter", "true")
    clone = tmp_path / "partial"
    git(tmp_path, "clone", "-q", "--filter=blob:none", "--no-checkout", f"file://{decomp_repo.path}", str(clone))
    assert missing_objects(clone), "the clone was expected to lack blobs"
    return clone


def test_git_no_lazy_fetch_is_honoured(partial_clone: Path) -> None:
    """The library's git calls must not download blobs from the promisor remote (git >= 2.39.4 honours
    GIT_NO_LAZY_FETCH; earlier versions fetch silently)."""
    missing = missing_objects(partial_clone)
    blob = git(partial_clone, "rev-parse", "HEAD:src/wallclock.c").strip()
    assert blob in missing
    with pytest.raises(MissingObjects) as exc:
        git_repo.git(partial_clone, "cat-file", "-p", blob)
    assert "promisor" in str(exc.value) or "missing" in str(exc.value)
    assert missing_objects(partial_clone) == missing, "cra's git call lazily fetched objects"


def test_partial_clone_never_fetches_and_never_crashes(partial_clone: Path, isolated_cra_home: Path) -> None:
    missing = missing_objects(partial_clone)
    # Nothing checked out: nothing to index, but no traceback and no lazy fetch.
    try:
        report = index(partial_clone)
    except MissingObjects as exc:
        assert str(partial_clone) in str(exc)
    else:
        assert report.parsed == 0
    assert missing_objects(partial_clone) == missing

    # Check out a few files (this fetches their blobs), then index what is there.
    git(partial_clone, "checkout", "HEAD", "--", "src/wallclock.c", "src/main.c", "include")
    git(partial_clone, "reset", "-q")  # the git index lists every file; the work tree holds a few
    missing = missing_objects(partial_clone)
    try:
        report = index(partial_clone)
    except MissingObjects as exc:
        assert str(partial_clone) in str(exc)
    else:
        assert "src/wallclock.c" in indexed_paths(partial_clone)
        assert "src/task.c" not in indexed_paths(partial_clone)
        assert "src/wallclock.c" in {i.symbol.path for i in reader.lookup_symbol(partial_clone, "InitWallClock")}
    assert missing_objects(partial_clone) == missing, "indexing lazily fetched objects"

    # The promisor remote gone: the CLI still ends cleanly (a result, or a clear error).
    git(partial_clone, "remote", "set-url", "origin", f"file://{partial_clone.parent}/gone")
    (partial_clone / "src/main.c").write_text((partial_clone / "src/main.c").read_text() + "\nvoid Extra(void) {}\n")
    result = cli("index", partial_clone, "--no-embed", "--full")
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0 or "error:" in result.stderr, result.stderr
    assert missing_objects(partial_clone) == missing


# ---------------------------------------------------------------------------------------------
# An indexer killed half-way
# ---------------------------------------------------------------------------------------------

# Runs index_repo and stops dead at a chosen point, announcing it in a marker file.
KILL_WRAPPER = r"""
import os, sys, time
from pathlib import Path
from agent.index import build

pause_on = os.environ["CRA_TEST_PAUSE_ON"]
marker = Path(os.environ["CRA_TEST_MARKER"])


def pause(where):
    marker.write_text(where)
    time.sleep(600)


if pause_on == "write_state":  # lance tables written, DuckDB transaction not committed
    real = build._write_state

    def slow(*args, **kwargs):
        pause("write_state")
        return real(*args, **kwargs)

    build._write_state = slow


def progress(msg):
    if pause_on == "parsing" and msg.startswith("parsing"):
        pause(msg)


build.index_repo(Path(sys.argv[1]), home=sys.argv[2], embed=False, full=sys.argv[3] == "full",
                 on_progress=progress)
marker.write_text("finished")
"""


def start_paused_indexer(tmp_path: Path, repo: Path, home: Path, pause_on: str, full: bool) -> subprocess.Popen:
    script = tmp_path / "kill_wrapper.py"
    script.write_text(KILL_WRAPPER)
    marker = tmp_path / f"marker-{pause_on}"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CRA_TEST_PAUSE_ON": pause_on, "CRA_TEST_MARKER": str(marker)}
    proc = subprocess.Popen([PYTHON, str(script), str(repo), str(home), "full" if full else "incremental"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the indexer exited early ({proc.returncode}): {proc.stderr.read().decode()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the indexer never reached its pause point")
        time.sleep(0.05)
    time.sleep(0.1)
    assert marker.read_text() != "finished"
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def has_symbol(repo: Path, name: str, home: Path) -> bool:
    found = retrieval.search(repo, name, k=50, home=home)
    return any(s.name == name for s in found.symbols)


@pytest.mark.parametrize(("pause_on", "full"), [("parsing", False), ("write_state", False), ("write_state", True)])
def test_killed_indexer_leaves_previous_index_usable(decomp_repo: DecompRepo, tmp_path: Path, pause_on: str,
                                                     full: bool) -> None:
    repo = decomp_repo.path
    home = tmp_path / "home"
    index(repo, home=home)
    paths = project_paths(repo, home)
    [(generation,)] = rows(repo, "SELECT generation FROM index_state", home=home)

    (repo / "src/wallclock.c").write_text((repo / "src/wallclock.c").read_text()
                                          + "\nvoid WallClockKilledEdit(void)\n{\n}\n")
    proc = start_paused_indexer(tmp_path, repo, home, pause_on, full)
    try:
        if pause_on == "write_state":
            # The writer holds the store: a reader gives up with a clear StoreBusy, not a hang.
            with pytest.raises(StoreBusy) as exc:
                cra_store.connect(paths.store, read_only=True, wait_s=0.5).close()
            assert str(paths.store) in str(exc.value)
    finally:
        kill(proc)

    # The previous index is intact and searchable.
    assert recorded_commit(repo, home) == decomp_repo.head
    assert rows(repo, "SELECT generation, dirty_paths FROM index_state", home=home) == [(generation, [])]
    assert "src/wallclock.c" in {f.path for f in retrieval.search(repo, "wall clock window", home=home).files}
    assert not has_symbol(repo, "WallClockKilledEdit", home)
    [info] = reader.lookup_symbol(repo, "InitWallClock", home=home)
    assert info.callers

    # Discard the edit the killed run saw, change another file: the next run succeeds and nothing of the
    # killed run leaks into the index.
    git(repo, "checkout", "--", "src/wallclock.c")
    (repo / "src/task.c").write_text((repo / "src/task.c").read_text() + "\nvoid TaskAfterKill(void)\n{\n}\n")
    report = index(repo, home=home, full=full, wait_s=5)
    assert report.commit == decomp_repo.head
    if not full:
        assert report.parsed == 1
    assert has_symbol(repo, "TaskAfterKill", home)
    assert not has_symbol(repo, "WallClockKilledEdit", home)
    with pytest.raises(UnknownSymbol):
        reader.lookup_symbol(repo, "WallClockKilledEdit", home=home)
    if full:
        lance = {p.name for p in paths.lance.iterdir() if p.name.endswith(".lance")}
        [(new_generation,)] = rows(repo, "SELECT generation FROM index_state", home=home)
        assert new_generation > generation
        assert lance == {f"symbols_g{new_generation}.lance", f"files_g{new_generation}.lance"}


# ---------------------------------------------------------------------------------------------
# Two indexers on one project
# ---------------------------------------------------------------------------------------------

LOCK_HOLDER = r"""
import sys
from pathlib import Path
from agent.index.lock import index_lock

with index_lock(Path(sys.argv[1]), 5):
    print("locked", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def test_second_indexer_waits_then_fails_clearly(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    lock = project_paths(repo).index_lock
    holder = subprocess.Popen([PYTHON, "-c", LOCK_HOLDER, str(lock)], cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"

        with pytest.raises(IndexBusy) as exc:
            index(repo, wait_s=0.5)
        message = str(exc.value)
        assert str(holder.pid) in message
        assert "--wait" in message or "retry" in message.lower()

        result = cli("index", repo, "--no-embed", "--wait", "0.5")
        assert result.exit_code == IndexBusy.exit_code
        assert "error:" in result.stderr and str(holder.pid) in result.stderr

        # With a longer wait the second indexer gets the lock once the first lets go.
        released = threading.Event()

        def release() -> None:
            holder.stdin.write("\n")
            holder.stdin.flush()
            released.set()

        timer = threading.Timer(1.0, release)
        timer.start()
        try:
            report = index(repo, wait_s=30)
        finally:
            timer.cancel()
        assert released.is_set()
        assert report.full and report.commit == decomp_repo.head
        assert holder.stdout.readline().strip() == "released"
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait(timeout=30)
    assert retrieval.search(repo, "wall clock window").files


def test_a_store_draws_no_progress_bar_into_stdout(tmp_path: Path) -> None:
    """DuckDB draws a progress bar on stdout for queries over 2 s, which would corrupt `--json` output."""
    code = ("import sys, duckdb; from pathlib import Path; from agent import store\n"
            "plain = duckdb.connect(sys.argv[1] + '/plain.duckdb')\n"
            "print(plain.execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])\n"
            "with store.opened(Path(sys.argv[1]) / 'cra.duckdb') as con:\n"
            "    print(con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False"]  # on by default in a process like `cra --json`; off in the store
