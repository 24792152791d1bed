"""Children end with their parent: `kill -9` of `cra index` or of a Prefect-mode `cra run` leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from agent.index.embed import BULK_MIN_TEXTS
from tests.fixtures.decomp import DecompRepo

REPO_ROOT = Path(__file__).resolve().parents[1]


def _cra(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "agent.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})})


def _wait_for_child(proc: subprocess.Popen[bytes], needle: str, timeout: float = 240) -> list[psutil.Process]:
    """The descendants of `proc` whose command line has `needle`, once one appears."""
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            found = [p for p in parent.children(recursive=True) if needle in " ".join(p.cmdline())]
        except psutil.NoSuchProcess:
            found = []
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"no child with {needle!r} appeared (exit code {proc.poll()})")


def _gone(processes: list[psutil.Process], timeout: float = 30) -> bool:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


def test_a_killed_indexer_takes_its_embedding_worker_with_it(tmp_path: Path) -> None:
    repo = tmp_path / "many"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "many.c").write_text("".join(f"void Func{i}(void)\n{{\n}}\n\n" for i in range(BULK_MIN_TEXTS + 50)))
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "Add many functions"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True)
    proc = _cra("index", str(repo))  # enough texts to embed in a worker process
    workers = _wait_for_child(proc, "multiprocessing")
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 PID` would
    proc.wait()
    assert _gone(workers), [p.cmdline() for p in workers if p.is_running()]


def test_a_killed_prefect_run_takes_the_ephemeral_api_server_with_it(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    env = {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    proc = _cra("run", "Document the wall clock", "--repo", str(decomp_repo.path), "--retrieval-only", env=env)
    servers = _wait_for_child(proc, "uvicorn")
    time.sleep(1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _gone(servers), [p.cmdline() for p in servers if p.is_running()]
    deadline = time.monotonic() + 30  # the watcher leaves once its work is done
    while time.monotonic() < deadline and any("agent.lifeline" in line for line in _command_lines()):
        time.sleep(0.2)
    assert not any(f"agent.lifeline {proc.pid}" in line for line in _command_lines())


def _command_lines() -> list[str]:
    """The command line of every process, read once: a process that ends (or turns zombie) meanwhile is left out."""
    found = []
    for process in psutil.process_iter():
        try:
            found.append(" ".join(process.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
            pass
    return found
