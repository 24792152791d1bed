"""The ranker fitted on a repository's own history: past commits read where their author stood (the code at an
anchor before them, the history up to them), LightGBM LambdaRank kept only on a measured gain over the default
weights, stored with its provenance, refitted with only the new commits, and used by search and the benchmark."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from agent import ranker as fitted_ranker
from agent import retrieval
from agent.config import project_paths
from agent.errors import InvalidInput
from agent.eval import localize as L
from agent.index import history
from agent.index.build import index_repo, open_index
from agent.index.reader import IndexReader
from agent.localization import select_tasks
from agent.ranker import Group, RankerUnreadable, load, read_provenance
from bootstrap.ranking import (
    anchors_for,
    full_history,
    gold_symbols,
    load_examples,
    stored_commits,
)
from bootstrap.ranking import fit_ranker as fit
from tests.test_history import GitRepo, c_file

pytestmark = pytest.mark.timeout(900)

HOT = [f"src/engine_{n}.c" for n in "abcde"]
SYLLABLES = ["zor", "vak", "mel", "tis", "qua", "rin", "bop", "lex", "dun", "fay", "gor", "hul"]
WORDS = [SYLLABLES[n % 12] + SYLLABLES[(n // 12) % 12] + "x" for n in range(120)]
EVERY = 60  # commits between anchors in these tests


def _word_file(n: int, edit: int = 0) -> str:
    return f"// keeps the {WORDS[n]} going\n" + c_file(f"Step{n}").replace("Work(0)", f"Work({edit})")


def grow(repo: GitRepo, commits: int, rng: random.Random, used: list[int]) -> None:
    """Alternate two kinds of commits. One names a word only its file holds and no earlier commit mentions: the
    default weights bury that file under the engine files that the history, the file names and the working set
    favour. The other fixes an engine file, which those signals find."""
    for i in range(commits):
        if i % 2 == 0:
            n = len(used)
            used.append(n)
            repo.commit(f"Fix the {WORDS[n]} engine state", {f"src/w{n}.c": _word_file(n, edit=i + 1)})
        else:
            repo.commit(rng.choice(["Fix the engine state bug", "Fix the engine state again", "Fix an engine bug"]),
                        {rng.choice(HOT): c_file(f"Engine{len(used)}x{i}", "EngineTick")})


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> tuple[GitRepo, random.Random, list[int]]:
    """A history whose past commits teach something the default weights miss."""
    repo = GitRepo(tmp_path_factory.mktemp("learnable") / "repo")
    repo.commit("Initial commit", {**{path: c_file("EngineTick") for path in HOT},
                                   **{f"src/w{n}.c": _word_file(n) for n in range(len(WORDS))}})
    rng, used = random.Random(5), []
    grow(repo, 170, rng, used)
    return repo, rng, used


def test_history_as_of_a_commit_sees_only_older_commits(learnable) -> None:
    repo, _rng, _used = learnable
    head = repo.git("rev-parse", "HEAD")
    hist = full_history(repo.root, head)
    fixed = next(t for t in select_tasks(repo.root, last=500) if t.query == f"Fix the {WORDS[10]} engine state")
    before = history.as_of(hist, fixed.sha)
    # The commit itself and the newer ones are out of sight; its parent (an engine fix) is the newest one seen.
    similar = [hist.shas[c] for c, _ in history.similar_commits(before, fixed.query)]
    assert similar and fixed.sha not in similar
    assert all(hist.shas.index(sha) < hist.shas.index(fixed.sha) for sha in similar)
    assert fixed.sha in [hist.shas[c] for c, _ in history.similar_commits(hist, fixed.query)]
    parent_files = set(repo.git("show", "--name-only", "--format=", fixed.parent).split())
    assert {p for p, w in history.recent_files(before).items() if w == max(history.recent_files(before).values())} \
        == parent_files
    assert fixed.files[0] not in history.recent_files(before)


def test_anchors_are_at_most_every_commits_before_their_past_commits(learnable) -> None:
    repo, _rng, _used = learnable
    head = repo.git("rev-parse", "HEAD")
    hist = full_history(repo.root, head)
    tasks = select_tasks(repo.root, last=500)
    runs = anchors_for(tasks, hist, EVERY)
    seq = {sha: i for i, sha in enumerate(hist.shas)}
    assert sum(len(run) for _, run in runs) == len(tasks) and len(runs) >= 3
    for anchor, run in runs:
        assert all(0 <= seq[t.parent] - seq[anchor] <= EVERY for t in run)


def test_gold_symbols_are_read_at_the_parent(learnable) -> None:
    repo, _rng, _used = learnable
    fixed = next(t for t in select_tasks(repo.root, last=500) if t.query == f"Fix the {WORDS[3]} engine state")
    assert gold_symbols(repo.root, fixed) == ["src/w3.c::function::Step3"]


@pytest.fixture(scope="module")
def fitted(learnable, tmp_path_factory: pytest.TempPathFactory):
    """The ranker fitted on the learnable history, in a cra home of its own."""
    repo, _rng, _used = learnable
    home = tmp_path_factory.mktemp("ranker-home")
    folder = project_paths(repo.root, home).ranker
    report = fit(repo.root, folder, every=EVERY, min_queries=40)
    return repo, home, folder, report


def test_the_fit_beats_the_default_weights_and_is_stored_with_its_provenance(fitted) -> None:
    repo, _home, folder, report = fitted
    assert report.status == "fitted", report
    judged = report.validation["files"]
    assert judged["kept"] and judged["learned_acc@5"] > judged["default_acc@5"]
    assert judged["queries"] >= 0.1 * report.queries
    meta = read_provenance(folder)
    assert meta["until"] == repo.git("rev-parse", "HEAD") and meta["status"] == "fitted"
    assert meta["fitted_on"]["commits"] == report.queries == len(stored_commits(folder))
    assert set(meta["features"]["files"]) >= {"content", "history", "recent", "churn"}
    assert len(report.anchors) >= 3 and report.timing_s["total"] > 0
    # Every past commit is reachable from the head it was fitted up to, and each example is one of them.
    reachable = set(repo.git("rev-list", "HEAD").split())
    assert set(stored_commits(folder)) <= reachable
    assert load(folder).levels["files"].features == tuple(meta["features"]["files"])


def test_search_ranks_with_the_fitted_ranker_and_explains_it(fitted) -> None:
    repo, home, folder, _report = fitted
    index_repo(repo.root, home=home)
    query = f"Fix the {WORDS[110]} engine state"  # a word no commit has named yet: its file is w110.c
    learned = retrieval.search(repo.root, query, home=home, k=5)
    assert learned.ranker == "learned" and "src/w110.c" in [h.path for h in learned.files]
    assert all(hit.why for hit in learned.files)  # each file's features' shares of its score
    assert learned.symbols and learned.symbols[0].why
    # scores in (0, 1), best first, like the default weights': the stages read shares of the best score
    assert all(0 < hit.score < 1 for hit in learned.files + learned.symbols)
    assert [h.score for h in learned.files] == sorted((h.score for h in learned.files), reverse=True)
    hybrid = retrieval.search(repo.root, query, home=home, k=5, ranker="hybrid")
    assert hybrid.ranker == "hybrid" and "src/w110.c" not in [h.path for h in hybrid.files]


def test_a_refit_reads_only_the_new_commits(fitted, learnable) -> None:
    repo, _home, folder, first = fitted
    _repo, rng, used = learnable
    grow(repo, 6, rng, used)
    again = fit(repo.root, folder, every=EVERY, min_queries=40)
    assert again.new_commits == 6 and again.queries == first.queries + 6
    assert read_provenance(folder)["until"] == repo.git("rev-parse", "HEAD")
    assert len(load_examples(folder)) == again.queries


def test_too_short_a_history_keeps_the_default_weights(decomp_repo, tmp_path: Path) -> None:
    folder = tmp_path / "ranker"
    report = fit(decomp_repo.path, folder, every=EVERY)
    assert report.status == "too short" and report.queries < 100
    assert read_provenance(folder) is None and load(folder) is None
    index_repo(decomp_repo.path, home=tmp_path / "home", embed=False)
    assert retrieval.search(decomp_repo.path, "wall clock", home=tmp_path / "home").ranker == "hybrid"
    with pytest.raises(InvalidInput, match="cra ranker fit"):
        retrieval.search(decomp_repo.path, "wall clock", home=tmp_path / "home", ranker="learned")


def test_a_damaged_ranker_is_named_with_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "ranker.json").write_text(json.dumps({"features": {"files": ["content"]}}))
    (tmp_path / "files.txt").write_text("not a model")
    with pytest.raises(RankerUnreadable, match="cra ranker fit"):
        load(tmp_path)


def test_bad_input_is_refused_before_any_work(decomp_repo, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="names no commit"):
        fit(decomp_repo.path, tmp_path / "r", until="no-such-branch")
    with pytest.raises(InvalidInput, match="at least 1"):
        fit(decomp_repo.path, tmp_path / "r", every=0)
    assert not (tmp_path / "r").exists()


def test_the_benchmark_fits_on_the_commits_before_its_tasks_only(fitted, tmp_path: Path) -> None:
    repo, _home, _folder, _report = fitted
    tasks = select_tasks(repo.root, last=8)
    report = L.run_localize(repo.root, tasks, ["hybrid", "learned"], home=tmp_path / "eval")
    learned = report["fitted_on"]["learned"]
    assert learned["status"] == "fitted" and learned["tasks_among_them"] == 0
    assert learned["all_older_than_every_task"]
    oldest_parent = min(tasks, key=lambda t: t.committed_at).parent
    assert learned["until"] == oldest_parent
    assert "by hand" in report["fitted_on"]["hybrid"]
    assert report["summary"]["learned"]["tasks"] == report["summary"]["hybrid"]["tasks"] == 8


def test_the_cli_fits_shows_and_refuses_bad_input(decomp_repo, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agent.cli import app

    runner = CliRunner()
    home = str(tmp_path / "home")
    fitted = runner.invoke(app, ["ranker", "fit", "--repo", str(decomp_repo.path), "--home", home, "--no-prefect"])
    assert fitted.exit_code == 0, fitted.output
    said = " ".join(fitted.output.split())
    assert "too little history" in said and "default weights" in said
    shown = runner.invoke(app, ["ranker", "show", "--repo", str(decomp_repo.path), "--home", home])
    assert shown.exit_code == 0 and "no fitted ranker" in " ".join(shown.output.split())
    bad = runner.invoke(app, ["ranker", "fit", "--repo", str(decomp_repo.path), "--home", home, "--no-prefect",
                              "--until", "no-such-branch"])
    assert bad.exit_code != 0 and "names no commit" in " ".join(bad.output.split())
    bad = runner.invoke(app, ["search", "wall clock", "--repo", str(decomp_repo.path), "--home", home,
                              "--ranker", "learned"])
    assert bad.exit_code != 0


def test_the_flow_runs_each_anchor_as_a_task_and_publishes_the_decision(prefect_api, fitted, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.ranker import ranker_flow

    repo, home, folder, _report = fitted
    report = ranker_flow(str(repo.root), str(home), every=EVERY)  # a refit: nothing new to read
    assert report.status == "fitted" and report.new_commits == 0

    async def runs() -> tuple[list[str], list[dict]]:
        async with get_client() as client:
            [flow_run] = [r for r in await client.read_flow_runs() if r.parameters.get("repo") == str(repo.root)]
            tasks = await client.read_task_runs()
            names = sorted(t.name for t in tasks if t.flow_run_id == flow_run.id)
            found = await client.read_artifacts()
            return names, [a.data for a in found if a.key == "cra-ranker-refit" and a.flow_run_id == flow_run.id]

    import asyncio

    names, tables = asyncio.run(runs())
    assert names == ["fit-files", "fit-symbols"]
    [table] = tables
    rows = json.loads(table) if isinstance(table, str) else table
    assert {row["level"] for row in rows} == {"files", "symbols"} and all(row["kept"] for row in rows)


def test_the_speed_benchmark_times_searches_with_the_fitted_ranker_too(fitted) -> None:
    from agent.eval.bench import bench_index

    repo, _home, folder, _report = fitted
    figures = bench_index(repo.root, edits=1, queries=(f"Fix the {WORDS[111]} engine state",), repeats=2,
                          ranker=folder)
    assert figures["search_ms"]["queries"] == figures["search_ms_learned"]["queries"] == 1
    assert figures["search_ms_learned"]["p50"] > 0


def test_a_killed_fits_leftover_worktree_does_not_stop_the_next(decomp_repo, tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "worktree").mkdir(parents=True)
    (state / "worktree" / "half-checked-out.c").write_text("int x;\n")
    report = fit(decomp_repo.path, tmp_path / "ranker", state=state, every=EVERY)
    assert report.anchors and report.status == "too short"
    assert not (state / "worktree").exists()
    assert not list((decomp_repo.path / ".git" / "worktrees").glob("*"))  # git forgot the scratch worktree


def test_past_commits_that_gave_no_example_are_not_read_again(tmp_path: Path) -> None:
    repo = GitRepo(tmp_path / "gappy")
    repo.commit("Initial commit", {"src/clock.c": c_file("InitClock"), "src/hand.c": c_file("MoveHand")})
    lost = repo.commit("Add the minute hand", {"src/minute.c": c_file("MoveMinute")})
    repo.commit("Speed up the clock ticks", {"src/clock.c": c_file("InitClockFast")})  # its parent misses a blob
    repo.commit("Remove the minute hand", {"src/minute.c": None})
    repo.commit("Slow down the hand again", {"src/hand.c": c_file("MoveHandSlowly")})
    repo.drop_object(f"{lost}:src/minute.c")
    folder = tmp_path / "ranker"
    first = fit(repo.root, folder, every=1)
    assert first.new_commits == 2 and first.dropped["code unreadable at the anchor (missing objects)"] == 1
    assert len(first.anchors) == 1
    again = fit(repo.root, folder, every=1)
    assert again.new_commits == 0 and again.queries == first.queries and again.anchors == first.anchors
    assert fit(repo.root, folder, every=1, full=True).new_commits == 2


BERRY = """u16 gBerryWaterCount;

void WaterBerryTree(struct BerryTree *tree)
{
    gBerryWaterCount++;
    tree->watered = TRUE;
}

void PlantBerry(u8 id)
{
    Work(id);
}

void UpdateBerryTrees(void)
{
""" + "    Work(0);\n" * 60 + "}\n"


def test_symbol_candidates_carry_what_their_bodies_and_sizes_say(tmp_path: Path) -> None:
    """The symbol the query names is a candidate; the functions of the best files are read whole: the one whose
    body uses the query's words and identifiers leads on body BM25 and identifiers, the long one reads longer, and
    each carries its file's share of the best."""
    repo = GitRepo(tmp_path / "repo")
    repo.commit("Add berry trees", {"src/berry.c": BERRY, "src/menu.c": c_file("OpenMenu", "CloseMenu")})
    home = tmp_path / "home"
    index_repo(repo.root, home=home, embed=False)
    paths, state = open_index(repo.root, home)
    with IndexReader(paths.store, paths.repo) as reader:
        searcher = retrieval.Searcher(paths, state, reader)
    query = "Count gBerryWaterCount when watering a tree"
    allowed = set(searcher.files)
    rows = searcher.symbol_rows(query, searcher.signals(query, allowed), [("src/berry.c", 2.0), ("src/menu.c", 1.0)],
                                allowed)
    by_name = {searcher.meta[sid][0]: row for sid, row in rows.items()}
    water, plant, update = by_name["WaterBerryTree"], by_name["PlantBerry"], by_name["UpdateBerryTrees"]
    assert by_name["gBerryWaterCount"]["identifier"] == 1.0 and by_name["gBerryWaterCount"]["name"] == 1.0
    assert water["body"] == 1.0 and water["body_identifier"] == 1.0
    assert plant["body"] < water["body"] and plant["body_identifier"] == 0.0 == update["body_identifier"]
    assert update["lines"] > water["lines"] > 0
    assert water["file_share"] == 1.0 and by_name["OpenMenu"]["file_share"] == 0.5
    assert by_name["OpenMenu"]["body"] == 0.0


def _ranking_groups(flip_from: int, n: int = 100, size: int = 20) -> list[Group]:
    """`n` queries, oldest first, of `size` candidates with features (a, b): the changed one has the highest a,
    or from query `flip_from` on the lowest."""
    rng = np.random.default_rng(3)
    groups = []
    for q in range(n):
        x = rng.random((size, 2))
        labels = np.zeros(size)
        labels[np.argmin(x[:, 0]) if q >= flip_from else np.argmax(x[:, 0])] = 1
        groups.append(Group(f"q{q}", [f"k{i}" for i in range(size)], x, labels, 1))
    return groups


def test_a_fit_is_judged_on_the_newest_queries_by_models_fitted_only_before_them() -> None:
    """Where the answers follow one rule, the judged fit learns it and beats a blind baseline; where the newest
    queries turn the rule round, each judged block scores as a model fitted only on the queries before it does."""
    steady = fitted_ranker.judge(_ranking_groups(flip_from=10**6), ("a", "b"), lambda g: g.features[:, 1])
    assert len(steady.blocks) == fitted_ranker.FOLDS and steady.queries == 30
    assert steady.learned_hits >= 27 and steady.learned_hits > steady.baseline_hits + 15
    assert steady.rounds in fitted_ranker.ROUNDS
    groups = _ranking_groups(flip_from=70)
    turned = fitted_ranker.judge(groups, ("a", "b"), lambda g: -g.features[:, 0])
    assert turned.baseline_hits == 30 and turned.learned_hits < turned.baseline_hits
    for start, block in zip((70, 80, 90), turned.blocks):
        before = fitted_ranker.train(groups[:start], ("a", "b"), block["rounds"])
        valid = groups[start:start + 10]
        scores = [before.booster.predict(g.features) for g in valid]
        assert block["learned_acc@5"] == fitted_ranker.hits_at(scores, valid) / 10
