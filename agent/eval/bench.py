"""Speed and memory benchmarks of the index on a real checkout, never touching it."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from agent import repo as git_repo
from agent.errors import CraError
from agent.index.build import index_repo
from agent.scratch import scratch_folder

SAMPLE_EVERY_S = 0.05
QUERIES = (
    "wall clock window",
    "Fix CaveTransition pals",
    "Use window constants in wallclock",
    "berry blender score",
    "battle anim sprite callback",
    "Document pokedex area screen",
    "save block checksum",
    "contest judge",
    "RTC time of day",
    "trainer hill floor",
)


class PeakMemory:
    """Samples the summed RSS of a process (default: this one) and its children in a thread; `peak` is the maximum seen."""

    def __init__(self, root: psutil.Process | None = None) -> None:
        self.root = root or psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for proc in tree:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(SAMPLE_EVERY_S)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextmanager
def scratch_worktree(repo: Path) -> Iterator[Path]:
    """A detached worktree of HEAD in a temporary folder, removed afterwards; the checkout is untouched."""
    top = git_repo.require_repo(repo)
    with scratch_folder("cra-bench-tree-") as tmp:
        tree = Path(tmp) / "tree"
        git_repo.git(top, "worktree", "add", "--detach", "--quiet", str(tree), "HEAD")
        try:
            yield tree
        finally:
            git_repo.git(top, "worktree", "remove", "--force", str(tree), check=False)
            git_repo.git(top, "worktree", "prune", check=False)


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _index_command(repo: Path, home: str, *, embed: bool) -> dict:
    """Run `cra index --json` as a user would, in a fresh process: its report, wall seconds (interpreter start and
    imports included) and the peak summed RSS of its process tree (the embedding worker included)."""
    command = [sys.executable, "-m", "agent.cli", "index", str(repo), "--home", home, "--full", "--json"]
    start = time.perf_counter()
    proc = subprocess.Popen(command + ([] if embed else ["--no-embed"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    with PeakMemory(psutil.Process(proc.pid)) as mem:
        stdout, stderr = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise CraError(f"`{' '.join(command)}` failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    return {**json.loads(stdout), "seconds": round(seconds, 2), "peak_rss_mib": round(mem.peak / 2**20)}


def bench_index(repo: Path, *, edits: int = 5, queries: tuple[str, ...] = QUERIES, repeats: int = 5,
                ranker: Path | None = None) -> dict:
    """Full index without and with embeddings, one-file incremental updates, and warm search latency (with the
    default weights, and with the fitted ranker stored in `ranker` when one is given)."""
    from agent.config import project_paths
    from agent.project import Project

    figures: dict = {}
    with scratch_folder("cra-bench-home-") as home_plain, scratch_folder("cra-bench-home-") as home_embed:
        plain = _index_command(repo, home_plain, embed=False)
        figures["full_no_embed"] = {k: plain[k] for k in ("seconds", "peak_rss_mib", "timings", "symbols", "c_files",
                                                          "c_files_with_errors", "raw_c_files_with_errors", "graph")}
        embedded = _index_command(repo, home_embed, embed=True)
        figures["full_embed"] = {k: embedded[k] for k in ("seconds", "peak_rss_mib", "timings", "embedded")}

        if ranker is not None:
            shutil.copytree(ranker, project_paths(repo, home_embed).ranker)
        with Project.open(repo, home_embed) as project:
            warm = project.searcher()
        for key, name in (("search_ms", "hybrid"), ("search_ms_learned", "learned")):
            if name == "learned" and ranker is None:
                continue
            latencies = []
            for query in queries:
                warm.search(query, ranker=name)  # first call warms caches for this query shape
                for _ in range(repeats):
                    latencies.append(warm.search(query, ranker=name).elapsed_ms)
            figures[key] = {"p50": round(statistics.median(latencies), 1),
                            "p95": round(sorted(latencies)[int(0.95 * (len(latencies) - 1))], 1),
                            "max": round(max(latencies), 1), "queries": len(queries), "repeats": repeats}

    with scratch_worktree(repo) as tree, scratch_folder("cra-bench-home-") as home:
        index_repo(tree, home=home, embed=True)
        c_files = sorted(p for p in git_repo.work_tree_files(tree) if p.endswith(".c"))
        step = max(1, len(c_files) // edits)
        samples = []
        for i, rel in enumerate(c_files[::step][:edits]):
            target = tree / rel
            target.write_text(target.read_text(errors="replace") + f"\nvoid CraBenchAdded{i}(void)\n{{\n}}\n")
            seconds, report = _timed(lambda: index_repo(tree, home=home, embed=True))
            samples.append({"file": rel, "seconds": round(seconds, 3), "timings": report.timings})
        figures["incremental_one_file"] = {"median_s": round(statistics.median(s["seconds"] for s in samples), 3),
                                           "max_s": max(s["seconds"] for s in samples), "samples": samples}
    figures["machine"] = {"cpus": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30),
                          "uname": subprocess.run(["uname", "-srm"], capture_output=True, text=True).stdout.strip()}
    return figures
