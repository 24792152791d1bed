"""The dependency graphs: include and reference resolution under C's visibility rules, decl links, metrics."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from agent import store
from agent.index import catalog, graph
from agent.index.parse import parse_file
from agent.index.reader import IndexReader, neighbors
from agent.index.symbols import ParsedFile

GLOBAL_H = """\
#ifndef GUARD_GLOBAL_H
#define GUARD_GLOBAL_H
typedef unsigned char u8;
typedef void (*TaskFunc)(u8 taskId);
typedef void (*MainCallback)(void);
#define BG_COLOR 7
#define ARRAY_COUNT(a) (sizeof(a) / sizeof((a)[0]))
#endif
"""

REPO = {
    "include/global.h": GLOBAL_H,
    "include/main.h": '#include "global.h"\nvoid SetMainCallback2(MainCallback cb);\nvoid AgbMain(void);\n',
    "include/task.h": '#include "global.h"\nu8 CreateTask(TaskFunc func, u8 priority);\n',
    "include/palette.h": (
        '#include "global.h"\nvoid LoadPalette(u8 n);\n'
        "static inline void SetBackdrop(u8 c)\n{\n    LoadPalette(c);\n}\n"
    ),
    "include/gba/syscall.h": "void CpuSet(const void *src, void *dest, u8 control);\n",
    "src/main.c": (
        '#include "global.h"\n#include "main.h"\n#include "task.h"\n'
        "static MainCallback sCallback2;\n"
        "void SetMainCallback2(MainCallback cb)\n{\n    sCallback2 = cb;\n}\n"
        "void AgbMain(void)\n{\n    SetMainCallback2(CB2_InitTitle);\n}\n"
        "u8 CreateTask(TaskFunc func, u8 priority)\n{\n    return priority;\n}\n"
    ),
    "src/title.c": (
        '#include "global.h"\n#include "main.h"\n#include "task.h"\n#include "palette.h"\n'
        '#include "gba/syscall.h"\n'
        "static void VBlankCB(void);\nstatic void Task_A(u8 taskId);\nstatic void Task_B(u8 taskId);\n"
        '#include "data/title_tasks.h"\n'
        "static void VBlankCB(void)\n{\n    SetBackdrop(BG_COLOR);\n}\n"
        "static void Task_A(u8 taskId)\n{\n    CpuSet(0, 0, 0);\n}\n"
        "static void Task_B(u8 taskId)\n{\n}\n"
        "void CB2_InitTitle(void)\n{\n    VBlankCB();\n    CreateTask(sTasks[0], ARRAY_COUNT(sTasks));\n}\n"
    ),
    "src/data/title_tasks.h": "static const TaskFunc sTasks[] = {Task_A, Task_B};\n",
    "src/options.c": (
        '#include "global.h"\n#include "palette.h"\n'
        "static void VBlankCB(void)\n{\n    SetBackdrop(0);\n}\n"
        "void CB2_Options(void)\n{\n    VBlankCB();\n}\n"
    ),
    "src/palette.c": '#include "global.h"\n#include "palette.h"\nvoid LoadPalette(u8 n)\n{\n}\n',
    "src/ambig_a.c": '#include "global.h"\nvoid Twice(void)\n{\n}\n',
    "src/ambig_b.c": '#include "global.h"\nvoid Twice(void)\n{\n    return;\n}\n',
    "include/gba/defines.h": "#define WIN_RANGE(a, b) (((a) << 8) | (b))\n",
    "include/gba/io_reg.h": "#define WIN_RANGE(a, b) (((a) << 8) | (b))\n",
    "src/window.c": (
        '#include "gba/defines.h"\n#include "gba/io_reg.h"\n'
        "unsigned Range(void)\n{\n    return WIN_RANGE(1, 2);\n}\n"
    ),
    "src/caller.c": (
        '#include "global.h"\nvoid Twice(void);\n'
        "#ifdef BUGFIX\nvoid Once(void)\n{\n    Twice();\n}\n#else\nvoid Once(void)\n{\n    Twice();\n}\n#endif\n"
    ),
    "libagbsyscall/libagbsyscall.s": (
        '\t.include "asm/macros.inc"\n\tthumb_func_start CpuSet\nCpuSet:\n\tswi 0xB\n\tbx lr\n'
    ),
    "asm/macros.inc": "\t.macro thumb_func_start name\n\t.thumb_func\n\t.global \\name\n\t.endm\n",
}


def _parse(files: dict[str, str]) -> list[ParsedFile]:
    out = []
    for path, text in files.items():
        pf = parse_file(path, text.encode())
        assert isinstance(pf, ParsedFile), pf
        out.append(pf)
    return out


def _build(db: Path, files: dict[str, str]) -> duckdb.DuckDBPyConnection:
    """A store holding `files`, fully refreshed."""
    con = store.connect(db)
    with store.transaction(con):
        catalog.insert_parsed(con, _parse(files), [])
        graph.refresh(con, None)
    return con


def _update(con: duckdb.DuckDBPyConnection, files: dict[str, str], *, record: bool) -> graph.GraphStats:
    """Replace the rows of `files` (empty text: removed) and refresh incrementally."""
    paths = set(files)
    with store.transaction(con):
        if record:
            graph.before_replace(con, paths)
        catalog.delete_paths(con, paths)
        catalog.insert_parsed(con, _parse({p: t for p, t in files.items() if t}), [])
        return graph.refresh(con, paths)


@pytest.fixture
def con(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    c = _build(tmp_path / "cra.duckdb", REPO)
    yield c
    c.close()


def _dst(con: duckdb.DuckDBPyConnection, src: str, name: str, kind: str | None = None) -> tuple[str | None, int]:
    rows = con.execute(
        "SELECT DISTINCT dst, candidates FROM refs WHERE src = ? AND name = ? AND (? IS NULL OR kind = ?)",
        [src, name, kind, kind],
    ).fetchall()
    assert len(rows) == 1, rows
    return rows[0]


def test_includes_resolve_against_dir_include_and_root(con: duckdb.DuckDBPyConnection) -> None:
    resolved = dict(con.execute("SELECT path || ' ' || target, resolved FROM includes").fetchall())
    assert resolved["src/title.c global.h"] == "include/global.h"
    assert resolved["src/title.c gba/syscall.h"] == "include/gba/syscall.h"
    assert resolved["src/title.c data/title_tasks.h"] == "src/data/title_tasks.h"
    assert resolved["include/main.h global.h"] == "include/global.h"
    assert resolved["libagbsyscall/libagbsyscall.s asm/macros.inc"] == "asm/macros.inc"


def test_same_static_name_resolves_to_own_file(con: duckdb.DuckDBPyConnection) -> None:
    assert _dst(con, "src/title.c::function::CB2_InitTitle", "VBlankCB") == ("src/title.c::function::VBlankCB", 1)
    assert _dst(con, "src/options.c::function::CB2_Options", "VBlankCB") == ("src/options.c::function::VBlankCB", 1)


def test_static_inline_in_header_resolves_in_includers(con: duckdb.DuckDBPyConnection) -> None:
    for src in ("src/title.c::function::VBlankCB", "src/options.c::function::VBlankCB"):
        assert _dst(con, src, "SetBackdrop") == ("include/palette.h::function::SetBackdrop", 1)
    assert _dst(con, "include/palette.h::function::SetBackdrop", "LoadPalette") == (
        "src/palette.c::function::LoadPalette", 1)


def test_prototypes_link_to_definitions(con: duckdb.DuckDBPyConnection) -> None:
    links = dict(con.execute("SELECT decl, defn FROM decl_links").fetchall())
    assert links["include/main.h::prototype::SetMainCallback2"] == "src/main.c::function::SetMainCallback2"
    assert links["include/palette.h::prototype::LoadPalette"] == "src/palette.c::function::LoadPalette"
    assert links["src/title.c::prototype::VBlankCB"] == "src/title.c::function::VBlankCB"  # static: own TU only


def test_callback_table_entries_are_value_edges(con: duckdb.DuckDBPyConnection) -> None:
    # The table sits in a data header included by title.c: its entries are title.c's static functions.
    table = "src/data/title_tasks.h::global::sTasks"
    assert _dst(con, table, "Task_A", "value") == ("src/title.c::function::Task_A", 1)
    assert _dst(con, table, "Task_B", "value") == ("src/title.c::function::Task_B", 1)
    assert _dst(con, "src/title.c::function::CB2_InitTitle", "sTasks", "value") == (table, 1)


def test_set_main_callback_makes_an_entry_point(con: duckdb.DuckDBPyConnection) -> None:
    cb2 = "src/title.c::function::CB2_InitTitle"
    assert _dst(con, "src/main.c::function::AgbMain", "CB2_InitTitle", "value") == (cb2, 1)
    metrics = {r[0]: r[1:] for r in con.execute("SELECT id, is_entry, entry_distance FROM symbol_metrics").fetchall()}
    assert metrics[cb2] == (True, 0)
    assert metrics["src/main.c::function::AgbMain"] == (True, 0)
    assert metrics["src/title.c::function::Task_A"] == (False, 2)  # CB2_InitTitle -> sTasks -> Task_A
    assert metrics["src/title.c::function::VBlankCB"][0] is False  # called directly: no entry point
    top = [e.name for e, _ in IndexReader.over(con).top_entry_points(10)]
    assert "CB2_InitTitle" in top and "AgbMain" in top


def test_function_like_macro_call_resolves_to_the_macro(con: duckdb.DuckDBPyConnection) -> None:
    assert _dst(con, "src/title.c::function::CB2_InitTitle", "ARRAY_COUNT") == (
        "include/global.h::macro_function::ARRAY_COUNT", 1)
    assert _dst(con, "src/title.c::function::VBlankCB", "BG_COLOR") == ("include/global.h::macro::BG_COLOR", 1)


def test_asm_implemented_function_resolves_to_its_label(con: duckdb.DuckDBPyConnection) -> None:
    label = "libagbsyscall/libagbsyscall.s::label::CpuSet"
    assert _dst(con, "src/title.c::function::Task_A", "CpuSet") == (label, 1)
    links = dict(con.execute("SELECT decl, defn FROM decl_links").fetchall())
    assert links["include/gba/syscall.h::prototype::CpuSet"] == label
    assert _dst(con, "libagbsyscall/libagbsyscall.s", "thumb_func_start", "asm") == (
        "asm/macros.inc::asm_macro::thumb_func_start", 1)


def test_ambiguity_is_counted_and_ifdef_duplicates_count_once(con: duckdb.DuckDBPyConnection) -> None:
    rows = con.execute("SELECT src, dst, candidates FROM refs WHERE name = 'Twice' AND kind = 'call'").fetchall()
    assert {r[0] for r in rows} == {"src/caller.c::function::Once", "src/caller.c::function::Once#2"}
    assert all(r[1] == "src/ambig_a.c::function::Twice" and r[2] == 2 for r in rows)
    assert [d.path for d in IndexReader.over(con).definition_of("Once", "src/caller.c")] == ["src/caller.c"]
    # A macro defined alike in two headers is one definition.
    assert _dst(con, "src/window.c::function::Range", "WIN_RANGE", "call") == (
        "include/gba/defines.h::macro_function::WIN_RANGE", 1)


def test_read_api(con: duckdb.DuckDBPyConnection) -> None:
    cb2 = "src/title.c::function::CB2_InitTitle"
    index = IndexReader.over(con)
    [caller] = index.callers(cb2)
    assert (caller["id"], caller["path"], caller["site_line"]) == ("src/main.c::function::AgbMain", "src/main.c", 11)
    called = {c["name"]: c for c in index.callees(cb2) if c["ref_kind"] == "call"}
    assert set(called) == {"VBlankCB", "CreateTask", "ARRAY_COUNT"}
    assert (called["CreateTask"]["path"], called["CreateTask"]["line"]) == ("src/main.c", 13)
    near = neighbors(index, [cb2], hops=2)
    assert near[cb2] == 0 and near["src/title.c::function::VBlankCB"] == 1
    assert near["include/palette.h::function::SetBackdrop"] == 2
    assert neighbors(index.adjacency(), [cb2], hops=2) == near
    own = index.definition_of("VBlankCB", "src/options.c")
    assert [d.id for d in own] == ["src/options.c::function::VBlankCB"]
    assert len(index.definition_of("VBlankCB")) == 2


def test_metrics_cover_the_graphs(con: duckdb.DuckDBPyConnection) -> None:
    n_nodes, total = con.execute("SELECT count(*), sum(pagerank) FROM symbol_metrics").fetchall()[0]
    assert n_nodes > 0 and total == pytest.approx(1.0)
    files = dict(con.execute("SELECT path, in_degree FROM file_metrics").fetchall())
    assert set(files) == set(REPO)
    assert files["include/global.h"] >= 5


RENAMED = {
    "src/title.c": REPO["src/title.c"].replace("CB2_InitTitle", "CB2_StartTitle"),
    "src/main.c": REPO["src/main.c"].replace("CB2_InitTitle", "CB2_StartTitle"),
}


def _snapshot(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    queries = {
        "includes": "SELECT path, target, resolved, line FROM includes",
        "refs": "SELECT src, path, name, kind, line, recovered, dst, candidates FROM refs",
        "decl_links": "SELECT decl, defn FROM decl_links",
        "symbol_metrics": "SELECT id, in_degree, out_degree, entry_distance, is_entry FROM symbol_metrics",
        "file_metrics": "SELECT path, in_degree, out_degree FROM file_metrics",
    }
    return {t: sorted(con.execute(q).fetchall(), key=repr) for t, q in queries.items()}


LOCAL_EDITS = [
    {"src/options.c": REPO["src/options.c"].replace("    VBlankCB();", "    VBlankCB();\n    LoadPalette(2);")},
    {"src/title.c": REPO["src/title.c"].replace("Task_B", "Task_C")},  # the data table's entry loses its target
    {"src/palette.c": REPO["src/palette.c"].replace("LoadPalette", "LoadPal")},
]


@pytest.mark.parametrize("record", [True, False])
@pytest.mark.parametrize(
    "edit",
    [
        *LOCAL_EDITS,
        {"src/title.c": RENAMED["src/title.c"]},  # main.c's value ref loses its target
        RENAMED,
        {"src/options.c": REPO["src/options.c"].replace("SetBackdrop(0)", "SetBackdrop(1)")},  # no edge moves
        {"src/ambig_b.c": ""},  # a definition goes: the ambiguity with it
        {"include/palette.h": REPO["include/palette.h"].replace("LoadPalette(c)", "LoadPalette(c + 1)")},
        {"src/palette.h": "static inline void SetBackdrop(u8 c)\n{\n}\n"},  # a nearer header for palette.c
    ],
)
def test_incremental_refresh_matches_full(tmp_path: Path, edit: dict[str, str], record: bool) -> None:
    inc = _build(tmp_path / "inc.duckdb", REPO)
    stats = _update(inc, edit, record=record)
    assert not stats.full
    after = {**REPO, **edit}
    full = _build(tmp_path / "full.duckdb", {p: t for p, t in after.items() if t})
    assert _snapshot(inc) == _snapshot(full)
    pr_inc = dict(inc.execute("SELECT id, pagerank FROM symbol_metrics").fetchall())
    pr_full = dict(full.execute("SELECT id, pagerank FROM symbol_metrics").fetchall())
    assert sum(abs(pr_inc[i] - pr_full[i]) for i in pr_full) <= max(graph.PAGERANK_STALE_L1, 1e-6)


@pytest.mark.parametrize("edit", LOCAL_EDITS)
def test_local_metric_update_matches_full(tmp_path: Path, edit: dict[str, str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph, "PAGERANK_STALE_L1", 10.0)  # a toy graph: every change moves PageRank a lot
    inc = _build(tmp_path / "inc.duckdb", REPO)
    stats = _update(inc, edit, record=True)
    assert stats.pagerank.startswith("kept: local update")
    full = _build(tmp_path / "full.duckdb", {**REPO, **edit})
    assert _snapshot(inc) == _snapshot(full)


def test_refresh_without_changes_keeps_everything(con: duckdb.DuckDBPyConnection) -> None:
    before = _snapshot(con)
    stats = _update(con, {"src/options.c": REPO["src/options.c"]}, record=True)
    assert stats.pagerank.startswith("unchanged")
    assert _snapshot(con) == before
