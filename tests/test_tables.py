"""The LanceDB search tables: BM25 and vector search, filters, incremental replacement and versions."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from agent import store
from agent.errors import InvalidInput, NotIndexed
from agent.index import catalog, graph
from agent.index.embed import load_embedder
from agent.index.parse import parse_file
from agent.index.tables import OPTIMIZE_UNINDEXED_ROWS, SearchTables, embeds
from agent.index.tokens import token_text

SOURCES = {
    "src/wallclock.c": """#include "global.h"
#include "wallclock.h"

static u8 sClockHandAngle;

static void UpdateClockHands(void)
{
    sClockHandAngle++;
}

void CB2_InitWallClock(void)
{
    UpdateClockHands();
}
""",
    "src/battle_util.c": """#include "global.h"

s32 CalculateBaseDamage(struct BattlePokemon *attacker, struct BattlePokemon *defender, u32 move)
{
    return attacker->attack * 2 - defender->defense;
}
""",
    "src/battlex.c": """void BattleXIntro(void)
{
    CalculateBaseDamage(0, 0, 0);
}
""",
    "include/wallclock.h": """#ifndef GUARD_WALLCLOCK_H
#define GUARD_WALLCLOCK_H
void CB2_InitWallClock(void);
#endif
""",
    "include/constants/flags.h": "#define FLAG_RECEIVED_BIKE 0x90\n",
}


def parsed(sources: dict[str, str]) -> list:
    return [parse_file(path, text.encode()) for path, text in sources.items()]


def ids(hits: list[tuple[str, float]]) -> list[str]:
    return [key for key, _ in hits]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.fixture
def tables(tmp_path: Path, embedder) -> SearchTables:
    search = SearchTables(tmp_path / "lance", embedder, repo="fixture")
    search.build(1, None, search.prepare(parsed(SOURCES)))
    return search


def test_embed_rule() -> None:
    assert embeds("function", "void f(void)")
    assert embeds("global", "static u8 sClockHandAngle")
    assert not embeds("global", "static const u8 sText[]")
    assert not embeds("global", "extern u8 gFoo", "extern")
    assert not embeds("macro", "FLAG_RECEIVED_BIKE")


def test_fts_finds_a_symbol_by_a_sub_word(tables: SearchTables) -> None:
    hits = tables.search_symbols(token_text("wall"), 10, kinds=["function"])
    assert ids(hits)[0] == "src/wallclock.c::function::CB2_InitWallClock"
    assert ids(tables.search_files(token_text("clock hands"), 5))[0] == "src/wallclock.c"
    assert ids(tables.search_content(token_text("defense"), 5)) == ["src/battle_util.c"]
    assert tables.search_symbols("", 5) == []


def test_fts_scores_are_bm25(tables: SearchTables) -> None:
    rows = tables._table("files").search().select(["path", "tokens"]).limit(None).to_arrow().to_pylist()
    docs = {row["path"]: row["tokens"].split() for row in rows}
    avgdl = sum(map(len, docs.values())) / len(docs)
    having = [d for d in docs.values() if "clock" in d]
    idf = math.log(1 + (len(docs) - len(having) + 0.5) / (len(having) + 0.5))
    for path, score in tables.search_files("clock", 10):
        tf, dl = docs[path].count("clock"), len(docs[path])
        assert score == pytest.approx(idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * dl / avgdl)), rel=1e-3)


def test_vector_search_ranks_the_semantic_match_first(tables: SearchTables) -> None:
    vector = tables.embed_query("how much damage an attack does")
    hits = tables.nearest_symbols(vector, 5)
    assert ids(hits)[0] == "src/battle_util.c::function::CalculateBaseDamage"
    assert all(-1.0 <= score <= 1.0 for _, score in hits)
    assert "include/constants/flags.h::macro::FLAG_RECEIVED_BIKE" not in ids(hits)  # not embedded
    assert ids(tables.nearest_files(tables.embed_query("wall clock"), 2)) in (
        ["src/wallclock.c", "include/wallclock.h"], ["include/wallclock.h", "src/wallclock.c"])


def test_filters(tables: SearchTables) -> None:
    vector = tables.embed_query("damage")
    assert set(ids(tables.nearest_symbols(vector, 10, path="src/battle_"))) == {
        "src/battle_util.c::function::CalculateBaseDamage"}  # a literal prefix: `_` is no wildcard
    in_include = ids(tables.search_symbols("clock", 10, module="include"))
    assert in_include and {k.split("::")[0] for k in in_include} == {"include/wallclock.h"}
    assert ids(tables.search_symbols("clock", 10, kinds=["global"])) == ["src/wallclock.c::global::sClockHandAngle"]
    assert set(ids(tables.search_files("clock", 10, langs=["h"]))) == {"include/wallclock.h"}


def test_replace_paths_and_checkout_of_the_older_version(tables: SearchTables, tmp_path: Path) -> None:
    before = tables.versions
    edited = {"src/wallclock.c": SOURCES["src/wallclock.c"].replace("CB2_InitWallClock", "CB2_StartAlarmClock")}
    after = tables.replace_paths(None, {"src/wallclock.c", "include/constants/flags.h"}, tables.prepare(parsed(edited)))
    assert after[0] > before[0] and after[1] > before[1]
    found = ids(tables.search_symbols(token_text("alarm"), 10))
    assert found == ["src/wallclock.c::function::CB2_StartAlarmClock"]  # unindexed rows are searched too
    assert "src/wallclock.c::function::CB2_InitWallClock" not in ids(tables.search_symbols("initwall init", 10))
    assert tables.search_symbols("flag_received_bike", 5) == []
    alarm = tables.embed_query("alarm clock")
    assert "src/wallclock.c::function::CB2_StartAlarmClock" in ids(tables.nearest_symbols(alarm, 3))

    old = SearchTables(tmp_path / "lance", load_embedder())
    old.open(1, *before)
    assert ids(old.search_symbols(token_text("CB2_InitWallClock"), 1)) == [
        "src/wallclock.c::function::CB2_InitWallClock"]
    assert old.search_symbols("alarm", 5) == []


def test_update_graph_fields_keeps_vectors(tables: SearchTables) -> None:
    sid = "src/battle_util.c::function::CalculateBaseDamage"
    query = tables.embed_query("how much damage an attack does")
    before = tables.nearest_symbols(query, 1)
    version = tables.update_graph_fields([{"id": sid, "callers": ["BattleXIntro"], "callees": [],
                                           "entry_distance": 3, "pagerank": 0.5}])
    assert version == tables.versions[0]
    row = tables._table("symbols").search().where(f"id = '{sid}'").limit(1).to_arrow().to_pylist()[0]
    assert row["callers"] == ["BattleXIntro"] and row["entry_distance"] == 3 and row["text"]
    assert tables.nearest_symbols(query, 1) == before
    reopened = SearchTables(Path(tables.db.uri), None)
    reopened.open(1, *tables.versions)  # the vectors that go with the new symbols version are found
    assert ids(reopened.nearest_symbols(query, 1)) == [sid]
    assert ids(tables.search_symbols("calculate", 5))[0] == sid


def test_graph_fields_come_from_the_store(tmp_path: Path) -> None:
    files = parsed(SOURCES)
    with store.opened(tmp_path / "cra.duckdb") as con:
        catalog.insert_parsed(con, files, [])
        graph.refresh(con, None)
        search = SearchTables(tmp_path / "lance", None)
        search.build(3, con, search.prepare(files))
        rows = search._table("symbols").search().select(["id", "callers", "callees"]).limit(None).to_arrow()
        by_id = {r["id"]: r for r in rows.to_pylist()}
        assert by_id["src/battle_util.c::function::CalculateBaseDamage"]["callers"] == ["BattleXIntro"]
        assert by_id["src/wallclock.c::function::CB2_InitWallClock"]["callees"] == ["UpdateClockHands"]

        edited = {"src/battlex.c": SOURCES["src/battlex.c"].replace("BattleXIntro", "BattleYIntro")}
        catalog.delete_paths(con, edited)
        catalog.insert_parsed(con, parsed(edited), [])
        graph.refresh(con, set(edited))
        search.replace_paths(con, set(edited), search.prepare(parsed(edited)))
        rows = search._table("symbols").search().where("name = 'CalculateBaseDamage'").limit(1).to_arrow()
        assert rows.to_pylist()[0]["callers"] == ["BattleYIntro"]  # an untouched row, refreshed


def test_text_only_generations(tmp_path: Path) -> None:
    search = SearchTables(tmp_path / "lance", None)
    for generation in (1, 2):
        search.build(generation, None, search.prepare(parsed(SOURCES)))
    assert ids(search.search_symbols("wall", 1)) == ["src/wallclock.c::function::CB2_InitWallClock"]
    with pytest.raises(InvalidInput):
        search.nearest_symbols(np.zeros(384, np.float32), 5)
    assert sorted(search.drop_other_generations(2)) == ["files_g1", "symbols_g1"]
    search.open(2)
    assert search.search_files("clock", 1)


def test_index_maintenance_after_many_replacements(tables: SearchTables, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.index.tables.OPTIMIZE_UNINDEXED_ROWS", dict.fromkeys(OPTIMIZE_UNINDEXED_ROWS, 0))
    constants = {"include/constants/flags.h": "#define FLAG_RECEIVED_BIKE 0x90\n#define FLAG_GOT_ROD 0x91\n"}
    tables.replace_paths(None, set(constants), tables.prepare(parsed(constants)))  # no embedded symbol at all
    edited = {"src/battle_util.c": SOURCES["src/battle_util.c"].replace("CalculateBaseDamage", "ComputeDamage")}
    tables.replace_paths(None, set(edited), tables.prepare(parsed(edited)))
    for table in tables._read.values():
        assert all(table.index_stats(index.name).num_unindexed_rows == 0 for index in table.list_indices())
    assert ids(tables.search_symbols("rod", 5)) == ["include/constants/flags.h::macro::FLAG_GOT_ROD"]
    assert ids(tables.nearest_symbols(tables.embed_query("damage of an attack"), 1)) == [
        "src/battle_util.c::function::ComputeDamage"]


def _unindexed(table) -> list[int]:
    return [table.index_stats(index.name).num_unindexed_rows for index in table.list_indices()]


def test_a_move_that_rewrites_many_files_folds_them_into_the_indexes(tables: SearchTables) -> None:
    """A file row holds a whole file's tokens and is searched flat until indexed (on pokeruby a move that rewrote
    444 of them took BM25 over contents from 11 to 750 ms): many rewritten files are indexed at once, while a
    one-file edit does not pay for an optimize."""
    moved = {f"src/moved_{i}.c": f"void MovedRoutine{i}(void)\n{{\n}}\n" for i in range(40)}
    tables.replace_paths(None, set(moved), tables.prepare(parsed(moved)))
    assert set(_unindexed(tables._read["files"])) == {0}
    edited = {"src/moved_0.c": "void MovedAgain(void)\n{\n}\n"}
    tables.replace_paths(None, set(edited), tables.prepare(parsed(edited)))
    assert 0 < max(_unindexed(tables._read["files"])) <= OPTIMIZE_UNINDEXED_ROWS["files"]
    assert ids(tables.search_files("moved routine39", 1)) == ["src/moved_39.c"]


def test_writes_delete_old_versions_but_keep_the_recorded_and_tagged_ones(tmp_path: Path, embedder,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.index.tables.MAX_OLD_VERSIONS", 2)
    monkeypatch.setattr("agent.index.tables.CLEANUP_MARGIN", timedelta(seconds=1))
    search = SearchTables(tmp_path / "lance", embedder, repo="fixture", keep_versions=timedelta(0))
    recorded = [search.build(1, None, search.prepare(parsed(SOURCES)))]
    for i in range(5):
        time.sleep(1.2)  # every earlier version is older than the recorded one by more than the margin
        search.open(1, *recorded[-1])  # as the indexer does: at the versions it recorded last
        edited = {"src/battlex.c": SOURCES["src/battlex.c"].replace("BattleXIntro", f"BattleIntro{i}")}
        recorded.append(search.replace_paths(None, set(edited), search.prepare(parsed(edited))))
    symbols = search.db.open_table("symbols_g1")
    assert len(symbols.list_versions()) < symbols.version // 2
    with pytest.raises(NotIndexed):
        search.checkout(*recorded[1])  # deleted
    search.checkout(*recorded[-2])  # what a failed write rolls back to
    assert ids(search.search_symbols("battleintro3 battle intro3", 1)) == ["src/battlex.c::function::BattleIntro3"]
    search.open(1, *recorded[-1])  # its vectors by tag
    assert ids(search.nearest_symbols(search.embed_query("damage of an attack"), 1)) == [
        "src/battle_util.c::function::CalculateBaseDamage"]
