"""The speed benchmark runs end to end on a fixture decomp and leaves the checkout alone."""

from __future__ import annotations

import subprocess

from agent.eval.bench import bench_index


def _git(repo, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_bench_index_reports_every_figure(decomp_repo) -> None:
    root = decomp_repo.path
    before = (_git(root, "status", "--porcelain"), _git(root, "worktree", "list"), _git(root, "rev-parse", "HEAD"))
    figures = bench_index(root, edits=2, queries=("wall clock window", "task callback"), repeats=1)
    assert figures["full_no_embed"]["c_files"] > 0
    assert figures["full_no_embed"]["c_files_with_errors"] == 0
    assert figures["full_no_embed"]["peak_rss_mib"] > 0
    assert figures["full_embed"]["embedded"] > 0
    assert figures["search_ms"]["queries"] == 2
    samples = figures["incremental_one_file"]["samples"]
    assert len(samples) == 2 and all(s["file"].endswith(".c") for s in samples)
    assert all(s["timings"]["parse"] >= 0 for s in samples)
    assert figures["machine"]["cpus"] >= 1
    after = (_git(root, "status", "--porcelain"), _git(root, "worktree", "list"), _git(root, "rev-parse", "HEAD"))
    assert after == before
