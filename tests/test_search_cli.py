"""`cra search`, `cra symbol` and `cra index` from the command line, on one indexed fixture decomp.

The fixture is indexed once for the module (text-only, into a module cra home); the tests only read it.
Most go through typer's CliRunner; a few run `python -m agent.cli` as a user would.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from agent import retrieval
from agent.cli import app
from agent.index.build import index_repo
from agent.project import Project
from agent.retrieval import file_name_scores, name_words, query_identifiers, search
from tests.fixtures.decomp import DecompRepo

REPO_ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
runner = CliRunner()


def squash(text: str) -> str:
    return "".join(text.split())


@pytest.fixture(scope="module")
def indexed(decomp_template: DecompRepo, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("search-cli")
    repo = replace(decomp_template, path=root / "pokefixture")
    shutil.copytree(decomp_template.path, repo.path, symlinks=True)
    home = root / "home"
    report = index_repo(repo.path, home=home, embed=False)
    return SimpleNamespace(repo=repo.path, home=home, report=report)


def cra(ns: SimpleNamespace, *args: str):
    """Run a cra command against the module's index."""
    return runner.invoke(app, [*map(str, args), "--repo", str(ns.repo), "--home", str(ns.home)],
                         env={"COLUMNS": "250"})


def ok_json(result) -> object:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return json.loads(result.stdout)


# ---------------------------------------------------------------------------------------------
# cra search
# ---------------------------------------------------------------------------------------------


def test_search_json_ranks_wallclock(indexed) -> None:
    data = ok_json(cra(indexed, "search", "wall clock window", "--json"))
    assert set(data) >= {"files", "symbols", "elapsed_ms"}
    files = [hit["path"] for hit in data["files"]]
    assert "src/wallclock.c" in files[:3], files
    for hit in data["files"] + data["symbols"]:
        assert isinstance(hit["score"], float) and hit["score"] > 0
        assert isinstance(hit["why"], dict) and hit["why"]
        assert all(isinstance(v, (int, float)) for v in hit["why"].values())
    scores = [hit["score"] for hit in data["files"]]
    assert scores == sorted(scores, reverse=True)
    for hit in data["symbols"]:
        assert {"id", "name", "kind", "path", "line"} <= set(hit)
        assert hit["line"] >= 1


def test_search_kind_filter(indexed) -> None:
    data = ok_json(cra(indexed, "search", "wall clock", "--json", "--kind", "function"))
    kinds = {hit["kind"] for hit in data["symbols"]}
    assert kinds == {"function"}
    assert "InitWallClock" in {hit["name"] for hit in data["symbols"]}

    data = ok_json(cra(indexed, "search", "wall clock", "--json", "--kind", "global", "--kind", "macro"))
    assert data["symbols"]
    assert {hit["kind"] for hit in data["symbols"]} <= {"global", "macro"}


def test_search_path_and_module_filters(indexed) -> None:
    data = ok_json(cra(indexed, "search", "wall clock", "--json", "--path", "src/"))
    assert data["files"] and data["symbols"]
    assert all(hit["path"].startswith("src/") for hit in data["files"] + data["symbols"])

    data = ok_json(cra(indexed, "search", "wall clock", "--json", "--path", "include/"))
    assert data["files"]
    assert all(hit["path"].startswith("include/") for hit in data["files"] + data["symbols"])
    assert "include/wallclock.h" in [hit["path"] for hit in data["files"]]

    data = ok_json(cra(indexed, "search", "task", "--json", "--module", "include"))
    assert data["files"]
    assert all(os.path.dirname(hit["path"]) == "include" for hit in data["files"] + data["symbols"])


def test_search_module_filter_accepts_trailing_slash(indexed) -> None:
    plain = ok_json(cra(indexed, "search", "wall clock", "--json", "--module", "src"))
    slash = ok_json(cra(indexed, "search", "wall clock", "--json", "--module", "src/"))
    assert plain["files"]
    assert [h["path"] for h in slash["files"]] == [h["path"] for h in plain["files"]]
    assert [h["id"] for h in slash["symbols"]] == [h["id"] for h in plain["symbols"]]


def test_search_bm25_ranker(indexed) -> None:
    data = ok_json(cra(indexed, "search", "wall clock window", "--json", "--ranker", "bm25"))
    assert "src/wallclock.c" in [hit["path"] for hit in data["files"]][:3]
    assert all("bm25" in hit["why"] for hit in data["files"])


def test_query_identifiers_are_the_code_shaped_words() -> None:
    query = "Use VAR_RUN_TRIGGER_IMMEDIATELY in gSoftResetDisabled, not TRUE / FALSE; u16 to u32 for the Wall"
    assert query_identifiers(query) == ["var_run_trigger_immediately", "gsoftresetdisabled", "true", "false",
                                        "u16", "u32"]
    assert query_identifiers("Fix the wall clock in the intro") == []


def test_file_name_scores_share_of_name_words() -> None:
    assert name_words("src/battle_dome.c") == ("battle", "dome")
    assert name_words("include/global.fieldmap.h") == ("global", "fieldmap")
    words = {p: name_words(p) for p in ("src/battle_dome.c", "src/battle_main.c", "include/constants/trainer_types.h",
                                        "src/wallclock.c")}
    scores = file_name_scores("Tidy the battle dome trainer type checks", words)
    assert scores["src/battle_dome.c"] == 1.0
    assert scores["include/constants/trainer_types.h"] == 1.0  # "types" folds to "type"
    assert scores["src/battle_main.c"] == 0.5
    assert "src/wallclock.c" not in scores


def _contains(root: Path, rel: str, text: str) -> bool:
    return text in (root / rel).read_text(encoding="utf-8", errors="replace")


def test_hybrid_search_uses_identifiers_file_names_and_recent_work(indexed) -> None:
    with Project.open(indexed.repo, indexed.home) as project:
        searcher = project.searcher()
    langs = ["c", "h"]

    res = searcher.search("Use ANIM_TAG_BONE consistently", k=50, langs=langs)
    named = [f.path for f in res.files if "identifier" in f.why]
    assert named and set(named) == {f.path for f in res.files if _contains(indexed.repo, f.path, "ANIM_TAG_BONE")}
    assert {f.path for f in res.files[:len(named)]} == set(named)
    off = searcher.search("Use ANIM_TAG_BONE consistently", k=50, langs=langs,
                          weights=replace(retrieval.WEIGHTS, identifier=0.0))
    assert all(f.why.get("identifier", 0.0) == 0.0 for f in off.files)

    res = searcher.search("Tidy field effect code", k=50, langs=langs)
    why = {f.path: f.why for f in res.files}
    assert why["src/field_effect.c"]["file_name"] == pytest.approx(retrieval.WEIGHTS.file_name)
    assert why["include/constants/field_effects.h"]["file_name"] == pytest.approx(retrieval.WEIGHTS.file_name)
    assert "file_name" not in why.get("src/wallclock.c", {})

    # Nothing matches the words: the files of the newest commit that changed C code lead, by the working set.
    last = subprocess.run(["git", "-C", str(indexed.repo), "log", "-1", "--format=", "--name-only", "--", "*.c", "*.h"],
                          capture_output=True, text=True, check=True).stdout.split()
    res = searcher.search("zzqx vvqy", k=10, langs=langs)
    assert {f.path for f in res.files[:len(last)]} == set(last)
    assert all(f.why["recent"] > 0 for f in res.files[:len(last)])


def test_search_table_output(indexed) -> None:
    result = cra(indexed, "search", "wall clock window")
    assert result.exit_code == 0, result.stderr
    assert "src/wallclock.c" in result.stdout
    assert "InitWallClock" in result.stdout


def test_search_rejects_bad_options(indexed) -> None:
    result = cra(indexed, "search", "wall clock", "--ranker", "nope")
    assert result.exit_code == 2
    assert "error:" in result.stderr and "nope" in result.stderr
    result = cra(indexed, "search", "   ")
    assert result.exit_code == 2
    assert "error:" in result.stderr and "empty" in result.stderr


def test_markup_in_user_input_is_printed_literally(indexed) -> None:
    result = cra(indexed, "search", "[/x] wall clock")
    assert result.exit_code == 0, result.exception
    result = cra(indexed, "symbol", "[/x]")
    assert result.exit_code == 1, result.exception
    assert "[/x]" in result.stderr
    result = cra(indexed, "symbol", "[bold]Foo")  # rich swallows the tag: the message names 'Foo'
    assert result.exit_code == 1, result.exception
    assert "[bold]Foo" in result.stderr


# ---------------------------------------------------------------------------------------------
# cra symbol
# ---------------------------------------------------------------------------------------------


def test_symbol_shows_definition_and_callers(indexed) -> None:
    [info] = ok_json(cra(indexed, "symbol", "InitWallClock", "--json"))
    assert (info["name"], info["kind"], info["path"]) == ("InitWallClock", "function", "src/wallclock.c")
    assert not info["is_static"]
    assert info["start_line"] <= info["end_line"]
    assert "InitWallClock" in info["signature"]
    assert any(d.startswith("include/wallclock.h:") for d in info["declarations"])
    callers = {(c["name"], c["path"]) for c in info["callers"]}
    assert ("CB2_TitleScreenRun", "src/main.c") in callers
    assert ("CB2_ViewWallClock", "src/wallclock.c") in callers
    assert all({"name", "kind", "path", "line"} <= set(c) for c in info["callers"] + info["callees"])
    callees = {c["name"] for c in info["callees"]}
    assert {"CreateTask", "VBlankCB", "SetVBlankCallback"} <= callees

    result = cra(indexed, "symbol", "InitWallClock")
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = result.stdout
    assert "InitWallClock" in out and "src/wallclock.c" in out
    assert "CB2_TitleScreenRun" in out and "src/main.c" in out


def test_symbol_lists_each_static_definition_with_its_own_callers(indexed) -> None:
    infos = ok_json(cra(indexed, "symbol", "VBlankCB", "--json"))
    by_path = {info["path"]: info for info in infos}
    assert set(by_path) == {"src/field_effect.c", "src/wallclock.c"}
    assert all(info["is_static"] and info["kind"] == "function" for info in infos)

    wall, field = by_path["src/wallclock.c"], by_path["src/field_effect.c"]
    assert {c["name"] for c in wall["callers"]} == {"InitWallClock"}
    assert {c["path"] for c in wall["callers"]} == {"src/wallclock.c"}
    assert {c["name"] for c in field["callers"]} == {"DoEnterCaveTransition"}
    assert {c["path"] for c in field["callers"]} == {"src/field_effect.c"}
    assert {"LoadOam", "TransferPlttBuffer"} <= {c["name"] for c in wall["callees"]}
    assert "LoadOam" not in {c["name"] for c in field["callees"]}

    result = cra(indexed, "symbol", "VBlankCB")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "src/wallclock.c" in result.stdout and "src/field_effect.c" in result.stdout
    assert "InitWallClock" in result.stdout and "DoEnterCaveTransition" in result.stdout


def test_unknown_symbol(indexed) -> None:
    result = cra(indexed, "symbol", "NoSuchThing")
    assert result.exit_code == 1
    assert "error:" in result.stderr and "NoSuchThing" in result.stderr
    assert result.stdout == ""
    # A near miss suggests the names it could mean.
    result = cra(indexed, "symbol", "VBlank")
    assert result.exit_code == 1
    assert "VBlankCB" in result.stderr


# ---------------------------------------------------------------------------------------------
# Not indexed yet
# ---------------------------------------------------------------------------------------------


def test_search_unindexed_repo_says_to_index_first(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    for args in (["search", "wall clock"], ["symbol", "InitWallClock"], ["search", "wall clock", "--json"]):
        result = runner.invoke(app, [*args, "--repo", str(decomp_repo.path)], env={"COLUMNS": "250"})
        assert result.exit_code == 1, args
        assert "error:" in result.stderr
        assert "cra index" in result.stderr, result.stderr
        assert result.stdout == ""
    assert not list(isolated_cra_home.glob("projects/*/cra.duckdb")), "a search created a store"


# ---------------------------------------------------------------------------------------------
# cra index, and a real subprocess
# ---------------------------------------------------------------------------------------------


def test_index_command_json_and_table(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = str(decomp_repo.path)
    result = runner.invoke(app, ["index", repo, "--no-embed", "--json"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, (result.stderr, result.exception)
    report = json.loads(result.stdout)
    assert report["full"] is True
    assert report["commit"] == decomp_repo.head
    assert report["parsed"] > 30 and report["symbols"] > 500
    assert report["repo"] == str(decomp_repo.path.resolve())

    result = runner.invoke(app, ["index", repo, "--no-embed"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "up to date" in result.stdout


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "CRA_HOME": str(home), "COLUMNS": "250"}
    return subprocess.run([PYTHON, "-m", "agent.cli", *map(str, args)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_as_a_subprocess(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    home = tmp_path / "home"
    repo = decomp_repo.path

    proc = run_cli("index", repo, "--no-embed", "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["commit"] == decomp_repo.head
    assert list(home.glob("projects/*/cra.duckdb")), "CRA_HOME was not used"

    proc = run_cli("search", "wall clock window", "--repo", repo, "--json", home=home)
    assert proc.returncode == 0, proc.stderr
    assert "src/wallclock.c" in [hit["path"] for hit in json.loads(proc.stdout)["files"]][:3]

    proc = run_cli("symbol", "NoSuchThing", "--repo", repo, home=home)
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "NoSuchThing" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def _search_in_child(repo: Path, home: Path, out) -> None:
    out.put([h.path for h in search(repo, "wall clock", home=home, k=3).files])


def test_a_process_forked_after_a_search_searches_too(indexed) -> None:
    first = [h.path for h in search(indexed.repo, "wall clock", home=indexed.home, k=3).files]
    fork = multiprocessing.get_context("fork")
    out = fork.Queue()
    child = fork.Process(target=_search_in_child, args=(indexed.repo, indexed.home, out))
    child.start()
    child.join(60)
    if child.is_alive():  # its table searches wait on the parent's threads, which a fork does not copy
        child.kill()
    assert child.exitcode == 0 and out.get(timeout=5) == first
