"""Without the training stack and Prefect (the `train` and `flows` extras), cra still indexes, searches and runs;
the commands that need an extra say which one and how to install it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.decomp import DecompRepo

ROOT = Path(__file__).resolve().parents[1]
# A finder first on sys.meta_path that refuses the optional packages: importing one fails as if it was never installed.
WITHOUT_EXTRAS = """
import sys
EXTRAS = ('peft', 'trl', 'datasets', 'prefect', 'prefect_dask', 'dask', 'distributed')
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in EXTRAS:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, NotInstalled())
from agent.cli import app
app(sys.argv[1:])
"""


def cra_without_extras(*args: str) -> subprocess.CompletedProcess:
    """`cra ARGS` in a process where the optional packages cannot be imported."""
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}, check=False)


def test_index_search_and_a_run_need_no_extra(decomp_repo: DecompRepo) -> None:
    repo = str(decomp_repo.path)
    indexed = cra_without_extras("index", repo, "--no-embed")
    assert indexed.returncode == 0, indexed.stderr
    found = cra_without_extras("search", "wall clock hands", "--repo", repo, "--ranker", "bm25", "--json")
    assert found.returncode == 0 and "wallclock" in found.stdout, found.stderr
    ran = cra_without_extras("run", "Document InitWallClock", "--repo", repo, "--retrieval-only", "--no-prefect", "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["status"] == "succeeded"


def test_commands_that_need_an_extra_name_it(decomp_repo: DecompRepo) -> None:
    flowed = cra_without_extras("run", "Document InitWallClock", "--repo", str(decomp_repo.path), "--retrieval-only")
    assert flowed.returncode == 69 and "Traceback" not in flowed.stderr
    assert "running as a Prefect flow needs cra's flows extra (prefect, prefect_dask not installed): pip install " \
           "'cra[flows]' or run with --no-prefect" in " ".join(flowed.stderr.split())
    trained = cra_without_extras("train", "--stage", "scope", "--repo", str(decomp_repo.path))
    assert trained.returncode == 69 and "Traceback" not in trained.stderr
    assert "cra train needs cra's train extra (peft, trl, datasets not installed): pip install 'cra[train]'" in " ".join(
        trained.stderr.split())
