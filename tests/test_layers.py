"""Imports point one way: the runtime below curation, curation below bootstrapping, all of them below the flows;
within the runtime, the model layer and the stages never import what drives them. Lazy imports count too. Each table
of the home ledger is declared and queried by one module, its owner; the others call the owner's functions."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("agent", "curation", "bootstrap", "flows")  # each may import only from itself and those before it
ENTRY_POINTS = ("agent.cli", "agent.eval")  # the commands and benchmarks sit on top of everything
# Runtime layers that must not reach up: the model layer is told which role answers a stage (it never imports one),
# and a stage gets the model through its context.
NEVER = {
    "agent.llm": ("agent.stages", "agent.pipeline", "agent.validation", "agent.builds", "agent.runs"),
    "agent.stages": ("agent.pipeline", "agent.llm.client", "agent.llm.resolve", "agent.llm.serve"),
    "agent.config": ("agent.stages", "agent.llm.client", "agent.llm.resolve", "agent.llm.registry"),
}
LEDGER_OWNERS = {
    "llm_calls": "agent.llm.calls",
    "adapters": "agent.llm.registry", "promotions": "agent.llm.registry",
    "checkouts": "agent.projects",
    "runs": "agent.runs", "run_stages": "agent.runs", "decisions": "agent.runs",
    "training_examples": "curation.datasets",
    "preference_pairs": "curation.rounds", "rounds": "curation.rounds", "round_examples": "curation.rounds",
    "gate_decisions": "curation.gate",
    "bootstrap_commits": "bootstrap.pairs",
    "teacher_cache": "bootstrap.teacher",
    "enrichments": "agent.enrichment",
}
SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE(?: IF NOT EXISTS)?)\s+(\w+)")


def module_name(path: Path) -> str:
    """`agent/llm/resolve.py` -> `agent.llm.resolve`."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function, outside `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def under(name: str, prefix: str) -> bool:
    """Whether module `name` is `prefix` or inside it."""
    return name == prefix or name.startswith(prefix + ".")


SOURCES = sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_sources_are_found() -> None:
    assert len(SOURCES) > 50 and {module_name(p).split(".")[0] for p in SOURCES} == set(PACKAGES)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    me = module_name(path)
    if any(under(me, entry) for entry in ENTRY_POINTS):
        return
    rank = PACKAGES.index(me.split(".")[0])
    upward = sorted(m for m in imports(path) if m.split(".")[0] in PACKAGES[rank + 1:])
    assert not upward, f"{me} imports {', '.join(upward)}, from a package above it"
    for layer, forbidden in NEVER.items():
        if under(me, layer):
            reached = sorted(m for m in imports(path) for f in forbidden if under(m, f))
            assert not reached, f"{me} reaches up to {', '.join(reached)}"


def ledger_tables(path: Path) -> set[str]:
    """The ledger tables the string literals of `path` name after a SQL keyword (f-strings' literal parts too)."""
    tree = ast.parse(path.read_text(), str(path))
    return {table for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            for table in SQL_TABLE.findall(node.value) if table in LEDGER_OWNERS}


def test_each_ledger_table_is_declared_by_its_owner() -> None:
    for owner in set(LEDGER_OWNERS.values()):
        importlib.import_module(owner)
    from agent.store.ledger import LEDGER

    declared = {table: step.__module__ for step in LEDGER.steps
                for table in re.findall(r"CREATE TABLE (?:IF NOT EXISTS )?(\w+)", inspect.getsource(step))}
    assert declared == LEDGER_OWNERS


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_a_ledger_tables_owner_queries_it(path: Path) -> None:
    me = module_name(path)
    foreign = sorted(f"{table} ({LEDGER_OWNERS[table]})" for table in ledger_tables(path) if LEDGER_OWNERS[table] != me)
    assert not foreign, f"{me} queries {', '.join(foreign)}: call the owner's functions instead"
