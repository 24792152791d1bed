"""Child processes end with their parent, even when the parent is killed with SIGKILL.

cra's own worker pools set the parent-death signal in each worker (`die_with_parent`). Processes a library starts
for cra, such as Prefect's ephemeral API server, are watched from outside: `watch_children` starts a small watcher
that notes the command's descendants and ends the ones still running once the command is gone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_PDEATHSIG = 1
POLL_S = 0.1  # a child started and orphaned within one poll is not seen
GRACE_S = 5.0


def die_with_parent(owner: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (Linux); exit now if `owner`, the pool's owner, is gone.

    A forkserver's worker has the forkserver as parent, which itself ends with the owner.
    """
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not psutil.pid_exists(owner):
        os._exit(1)


def watch_children() -> subprocess.Popen[bytes]:
    """Start a watcher that ends this process's descendants when it is gone (it stops by itself after)."""
    return subprocess.Popen([sys.executable, "-m", "agent.lifeline", str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _watch(pid: int) -> None:
    """Note `pid`'s descendants while it runs; once it is gone, terminate (then kill) those still running."""
    try:
        watched = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    me = os.getpid()
    known: dict[int, psutil.Process] = {}
    while watched.is_running() and watched.status() != psutil.STATUS_ZOMBIE:
        try:
            known |= {p.pid: p for p in watched.children(recursive=True) if p.pid != me}
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    left = [p for p in known.values() if p.is_running()]  # is_running also checks the start time: no reused pid
    for process in left:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
