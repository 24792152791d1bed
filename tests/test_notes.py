"""History notes: each symbol's creations, renames and changes read from the real git history, only at or before the
indexed commit, kept up to date as the index moves, and shown by search, `cra symbol` and the stages."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
from typer.testing import CliRunner

from agent.cli import app
from agent.config import project_paths
from agent.index import notes
from agent.index.build import index_repo
from agent.index.history import MAX_COMMIT_FILES
from agent.index.reader import IndexReader, lookup_symbol
from agent.index.tables import embed_input
from agent.retrieval import search
from agent.runs import get_run
from tests.fixtures.decomp import DecompRepo
from tests.test_history import GitRepo

runner = CliRunner()


def clock(*functions: tuple[str, str]) -> str:
    """A C file defining `functions` (name, body statement), each used by a caller below them."""
    defs = "".join(f"u16 {name}(u8 hand)\n{{\n    {body}\n}}\n\n" for name, body in functions)
    calls = "".join(f"    {name}(0);\n" for name, _ in functions)
    return f"{defs}void UpdateClock(void)\n{{\n{calls}}}\n"


def history_repo(root: Path) -> tuple[GitRepo, dict[str, str]]:
    """Decompile, rename, fix, a sweep that touches the function too, and a helper two files define."""
    r = GitRepo(root)
    shas = {"decompile": r.commit("Decompile the wall clock", {
        "src/wallclock.c": clock(("sub_8135C50", "return hand * 6;")),
        "src/trainer.c": "static void Helper(void)\n{\n    Work(1);\n}\n",
        "src/wallclock_aux.c": "static void Helper(void)\n{\n    Work(2);\n}\n"})}
    shas["rename"] = r.commit("Rename sub_8135C50 to CalcHandAngle", {
        "src/wallclock.c": clock(("CalcHandAngle", "return hand * 6;"))})
    shas["fix"] = r.commit("Fix the minute hand overflowing at noon", {
        "src/wallclock.c": clock(("CalcHandAngle", "return (hand * 6) % 360;"))})
    shas["tidy"] = r.commit("Tidy the trainer helper", {
        "src/trainer.c": "static void Helper(void)\n{\n    Work(3);\n}\n"})
    sweep = {f"src/gen{i}.c": f"int gGen{i};\n" for i in range(MAX_COMMIT_FILES)}
    shas["sweep"] = r.commit("Format everything", {
        **sweep, "src/wallclock.c": clock(("CalcHandAngle", "return (hand * 6) % 360; "))})
    return r, shas


def test_changes_are_created_renamed_and_changed_and_a_sweep_only_names(tmp_path: Path) -> None:
    r, shas = history_repo(tmp_path / "repo")
    order = r.git("rev-list", "--reverse", "HEAD").split()
    changes, unreadable = notes.read_changes(r.root, order, sweeping={shas["sweep"]})
    assert unreadable == []
    seen = {(c.sha, c.path, c.name, c.event, c.old_name) for c in changes}
    assert (shas["decompile"], "src/wallclock.c", "sub_8135C50", "created", None) in seen
    assert (shas["rename"], "src/wallclock.c", "CalcHandAngle", "renamed", "sub_8135C50") in seen
    assert (shas["fix"], "src/wallclock.c", "CalcHandAngle", "changed", None) in seen
    assert not [c for c in changes if c.sha == shas["sweep"] and c.name == "CalcHandAngle"]  # a sweep says nothing


def test_notes_follow_renames_and_keep_a_shared_static_name_to_its_own_file(tmp_path: Path) -> None:
    r, shas = history_repo(tmp_path / "repo")
    home = tmp_path / "home"
    index_repo(r.root, home=home, embed=False)
    with IndexReader(project_paths(r.root, home).store) as index:
        found = index.notes_of([("CalcHandAngle", "src/wallclock.c"), ("Helper", "src/trainer.c"),
                                ("Helper", "src/wallclock_aux.c"), ("UpdateClock", "src/wallclock.c")])
        assert index.renamed_to("sub_8135C50") == "CalcHandAngle"
    angle = found[("CalcHandAngle", "src/wallclock.c")]
    assert [(e.event, e.subject, e.old_name) for e in angle.entries] == [
        ("created", "Decompile the wall clock", None),
        ("renamed", "Rename sub_8135C50 to CalcHandAngle", "sub_8135C50"),
        ("changed", "Fix the minute hand overflowing at noon", None)]
    assert angle.old_names == ["sub_8135C50"]
    assert angle.text() == ('created in "Decompile the wall clock"; was sub_8135C50 until "Rename sub_8135C50 to '
                            'CalcHandAngle"; changed in "Fix the minute hand overflowing at noon"')
    assert "Tidy the trainer helper" in found[("Helper", "src/trainer.c")].text()
    assert "Tidy the trainer helper" not in found[("Helper", "src/wallclock_aux.c")].text()


def test_search_finds_a_function_by_what_its_history_says(tmp_path: Path) -> None:
    r, _ = history_repo(tmp_path / "repo")
    home = tmp_path / "home"
    index_repo(r.root, home=home, embed=False)
    hits = search(r.root, "minute hand overflowing noon", home=home, k=5)
    assert hits.symbols[0].name == "CalcHandAngle"
    assert "Fix the minute hand overflowing at noon" in hits.symbols[0].history
    old = search(r.root, "sub_8135C50", home=home, k=5)  # the old name is in the text BM25 reads
    assert old.symbols[0].name == "CalcHandAngle"
    index_repo(r.root, home=home, embed=False, history_notes=False)  # built the other way: rebuilt without notes
    bare = search(r.root, "sub_8135C50", home=home, k=5)
    assert all(h.history == "" for h in bare.symbols) and "CalcHandAngle" not in [h.name for h in bare.symbols]


def test_notes_see_only_the_indexed_commit_and_move_with_the_index(tmp_path: Path) -> None:
    r, shas = history_repo(tmp_path / "repo")
    home = tmp_path / "home"
    r.git("checkout", "-q", shas["rename"])
    index_repo(r.root, home=home, embed=False)
    assert lookup_symbol(r.root, "CalcHandAngle", home=home)[0].history.entries[-1].event == "renamed"
    r.git("checkout", "-q", shas["fix"])
    moved = index_repo(r.root, home=home, embed=False)
    assert moved.parsed == 1  # only the file the fix touched
    info = lookup_symbol(r.root, "CalcHandAngle", home=home)[0]
    assert info.history.entries[-1].subject == "Fix the minute hand overflowing at noon"
    assert "Fix the minute hand" in search(r.root, "overflowing noon", home=home, k=3).symbols[0].history
    r.git("checkout", "-q", shas["rename"])
    index_repo(r.root, home=home, embed=False)
    back = lookup_symbol(r.root, "CalcHandAngle", home=home)[0]
    assert "Fix the minute hand" not in back.history.text()
    con = duckdb.connect(str(project_paths(r.root, home).store), read_only=True)
    assert con.execute("SELECT count(*) FROM symbol_changes WHERE sha = ?", [shas["fix"]]).fetchone()[0] == 0
    con.close()


def test_a_commit_whose_diff_is_unreadable_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    r, shas = history_repo(tmp_path / "repo")
    r.drop_object(f"{shas['fix']}:src/wallclock.c")
    order = r.git("rev-list", "--reverse", "HEAD").split()
    changes, unreadable = notes.read_changes(r.root, order, sweeping=set())
    assert unreadable == [shas["fix"], shas["sweep"]]  # the sweep's diff needs the fix's blob too
    assert {c.sha for c in changes} == {shas["decompile"], shas["rename"], shas["tidy"]}
    report = index_repo(r.root, home=tmp_path / "home", embed=False)
    assert any(line.startswith(shas["fix"][:10]) and "history notes" in line for line in report.commits_unreadable)


def test_cra_symbol_shows_the_history_and_finds_a_symbol_by_its_old_name(tmp_path: Path) -> None:
    r, _ = history_repo(tmp_path / "repo")
    home = tmp_path / "home"
    index_repo(r.root, home=home, embed=False)
    shown = runner.invoke(app, ["symbol", "sub_8135C50", "--repo", str(r.root), "--home", str(home)])
    assert shown.exit_code == 0, shown.output
    assert "sub_8135C50 has been renamed: it is now CalcHandAngle" in shown.output
    assert "renamed (was sub_8135C50): Rename sub_8135C50 to CalcHandAngle" in shown.output
    data = json.loads(runner.invoke(app, ["symbol", "CalcHandAngle", "--repo", str(r.root), "--home", str(home),
                                          "--json"]).output)
    assert data[0]["history"]["old_names"] == ["sub_8135C50"] and data[0]["asked_as"] is None
    found = runner.invoke(app, ["search", "minute hand overflowing", "--repo", str(r.root), "--home", str(home)])
    assert found.exit_code == 0 and "changed in" in found.output


def test_scope_and_precision_show_the_model_each_candidates_history(decomp_repo: DecompRepo) -> None:
    index_repo(decomp_repo.path, embed=False)
    result = runner.invoke(app, ["run", "Document InitWallClock", "--repo", str(decomp_repo.path),
                                 "--retrieval-only", "--no-prefect", "--json"])
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s for s in get_run(None, json.loads(result.output)["run_id"]).stages}
    precision = {c["name"]: c["history"] for c in stages["precision"]["input"]["candidates"]}
    assert "was sub_80A1234" in precision["InitWallClock"]
    scope = {c["path"]: c["history"] for c in stages["scope"]["input"]["candidates"]}
    assert "InitWallClock: " in scope["src/wallclock.c"]


def test_a_change_to_a_body_updates_the_bm25_text_without_re_embedding(tmp_path: Path) -> None:
    text = 'function CalcHandAngle  src/wallclock.c\nhistory: created in "Decompile"\nchanges: changed in "Fix noon"'
    assert "Decompile" in embed_input("CalcHandAngle", text) and "Fix noon" not in embed_input("CalcHandAngle", text)
    r, shas = history_repo(tmp_path / "repo")
    home = tmp_path / "home"
    r.git("checkout", "-q", shas["rename"])
    index_repo(r.root, home=home)
    r.git("checkout", "-q", shas["fix"])
    moved = index_repo(r.root, home=home)
    assert moved.parsed == 1 and moved.embedded == 0  # the note's origin, which the vector reads, did not change
    assert "Fix the minute hand" in search(r.root, "overflowing noon", home=home, k=3).symbols[0].history
