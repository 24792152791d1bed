"""Enrichment with the tiny model served for real as the teacher: every field validated, kept by body hash (a one-file
change re-asks about that file's changed functions only), in search texts and `cra symbol` marked as a model's,
reviewed in samples, turned into training examples, and run as the Prefect flow cra-enrich."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent import enrichment
from agent.cli import app
from agent.config import Config, ledger_path, load_config
from agent.enrichment import CallerNote, Enriched, Enrichment
from agent.errors import ConfigError, InvalidInput
from agent.eval.serving import free_port
from agent.index.build import index_repo
from agent.index.reader import lookup_symbol
from agent.retrieval import search
from bootstrap.enrich import enrich_repo, enrichment_examples
from bootstrap.teacher import Teacher
from curation.datasets import load_examples
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.models import chat_reply, standin_server
from tests.fixtures.served import Served, needs_vllm, with_teacher

runner = CliRunner()
WALLCLOCK = "src/wallclock.c"


def teacher_config(served: Served, where: Path) -> Config:
    """The served project's config with the tiny model as the teacher, priced so cost is measurable.

    The tiny model's weights are random: it fills strings up to their bounds, at times a character a token, so an
    answer can still be cut at max_tokens (on the weights of 2026-12 about one in six is). Functions are shown up to
    600 characters, so that the longest question (about 850 of the tiny tokenizer's tokens) leaves room for 1,150
    tokens of answer in the server's 2,048, and the tests ask about every function of the file, so that some answers
    always fit.
    """
    return with_teacher(served, where, "concurrency = 3\nmax_tokens = 1150\nbody_chars = 600\n"
                                       "price_in_per_mtok = 0.11\nprice_out_per_mtok = 0.60\n")


def stored(home: Path) -> list[tuple]:
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    try:
        return con.execute("SELECT path, name, model, complexity, prompt_tokens, cost_usd, fields FROM enrichments"
                           " ORDER BY path, name").fetchall()
    finally:
        con.close()


def unbounded(schema: dict, node: dict, where: str = "") -> list[str]:
    """Where in a JSON schema a string or a list has no bound on its length."""
    if "$ref" in node:
        return unbounded(schema, schema["$defs"][node["$ref"].rsplit("/", 1)[-1]], where)
    found = [where] if (node.get("type") == "string" and "maxLength" not in node
                        or node.get("type") == "array" and "maxItems" not in node) else []
    for key, child in node.get("properties", {}).items():
        found += unbounded(schema, child, f"{where}.{key}")
    return found + (unbounded(schema, node["items"], f"{where}[]") if "items" in node else [])


def test_the_schema_bounds_every_field_and_complexity_counts_branches() -> None:
    schema = Enrichment.model_json_schema()
    assert schema["properties"]["summary"]["maxLength"] == 160
    assert schema["properties"]["change_recipe"]["maxItems"] == 6
    assert schema["properties"]["confidence"]["maximum"] == 1.0
    # every string, list items included, has a bound: a teacher that loops is stopped by the grammar, not max_tokens
    assert unbounded(schema, schema) == []
    assert enrichment.complexity("void F(void)\n{\n    if (a && b)\n        G();\n    for (;;) {}\n}") == 4


def test_answers_from_before_the_items_were_bounded_are_read_as_kept_and_asked_again_past_the_cache(
        tmp_path: Path) -> None:
    home, key = tmp_path / "home", (WALLCLOCK, "CB2_ViewWallClock")
    fields = {"summary": "Opens the clock.", "description": "Sets up the clock's screen.", "intent_tags": ["clock"],
              "change_recipe": ["Keep the order of the callbacks. " * 10], "side_effects": [], "risks": [],
              "caller_notes": [{"name": "CB2_StartWallClock", "note": "Sets it as the main callback."}],
              "sanity_checks": [], "confidence": 0.5}
    with pytest.raises(ValueError, match="160 characters"):
        Enrichment.model_validate(fields)  # a step of 330 characters is past today's bound
    old = Enrichment.model_construct(**{**fields, "caller_notes": [CallerNote(**fields["caller_notes"][0])]})
    enrichment.store(home, [Enriched("e1", "clock", *key, "b1", "tiny", old, 1, 10, 5, 0.0, 1.0)])
    kept = enrichment.current(home, "clock", {key: "b1"})[key]
    assert kept.fields.change_recipe == fields["change_recipe"]
    assert kept.fields.caller_notes[0].name == "CB2_StartWallClock"
    now = Enrichment.model_validate({**fields, "change_recipe": ["Keep the order of the callbacks."]})
    with standin_server([chat_reply(now.model_dump_json())] * 2) as server:
        (tmp_path / "cra.toml").write_text(f'[teacher]\nendpoint = "{server.url}"\nmodel = "tiny"\n')
        teacher, question = Teacher(load_config(tmp_path), home), [{"role": "user", "content": "CB2_ViewWallClock"}]
        assert not teacher.ask("enrich", question, Enrichment).cached
        assert teacher.ask("enrich", question, Enrichment).cached and len(server.requests) == 1
        con = duckdb.connect(str(ledger_path(home)))
        con.execute("UPDATE teacher_cache SET answer = ?", [old.model_dump_json()])
        con.close()
        again = teacher.ask("enrich", question, Enrichment)
        assert not again.cached and again.value == now and len(server.requests) == 2
        assert teacher.ask("enrich", question, Enrichment).cached  # the new answer replaced the cached one


@needs_vllm
def test_enrich_with_the_tiny_teacher_keeps_answers_by_body_and_re_asks_only_changed_functions(
        served: Served, decomp_repo: DecompRepo, tmp_path: Path) -> None:
    config, home, repo = teacher_config(served, tmp_path), tmp_path / "home", decomp_repo.path
    first = enrich_repo(repo, config, home=home, files=WALLCLOCK)
    assert first.considered >= 8 and first.enriched + len(first.failed) == first.considered and first.enriched > 0
    assert first.prompt_tokens > 0 and first.cost_usd > 0 and first.unchanged == 0
    rows = stored(home)
    assert len(rows) == first.enriched and {r[0] for r in rows} == {WALLCLOCK} and {r[2] for r in rows} == {"tiny"}
    assert all(r[3] >= 1 and r[4] > 0 for r in rows)
    for row in rows:
        Enrichment.model_validate_json(row[6])  # every stored answer meets the schema
    # the summaries are in the search texts (both BM25 and vectors read them), shown marked as a model's
    name = rows[0][1]
    summary = Enrichment.model_validate_json(rows[0][6]).summary
    hits = search(repo, name, home=home, k=20)
    hit = next(h for h in hits.symbols if h.name == name)
    assert hit.summary.startswith(summary)
    info = lookup_symbol(repo, name, home=home)[0]
    assert info.enrichment is not None and info.enrichment.as_dict()["written_by"] == "model-written (tiny)"
    shown = runner.invoke(app, ["symbol", name, "--repo", str(repo), "--home", str(home)])
    assert shown.exit_code == 0 and "model-written (tiny" in shown.output
    # nothing changed: nothing is asked again but what failed
    again = enrich_repo(repo, config, home=home, files=WALLCLOCK)
    assert again.unchanged == first.enriched and again.enriched + len(again.failed) == len(first.failed)
    # one function's body changes in one commit: only it is asked about
    path = repo / WALLCLOCK
    path.write_text(path.read_text().replace("void CB2_ViewWallClock(void)\n{\n",
                                             "void CB2_ViewWallClock(void)\n{\n    gMain.vblankCounter1 = 0;\n", 1))
    subprocess.run(["git", "commit", "-qam", "Reset the frame counter when the clock opens"], cwd=repo, check=True)
    after = enrich_repo(repo, config, home=home, files=WALLCLOCK)
    assert after.considered == first.considered
    asked = set(again.failed) | {f"{WALLCLOCK}:CB2_ViewWallClock"}  # what failed before, and the changed function
    assert after.considered - after.unchanged == len(asked) and set(after.failed) <= asked


@needs_vllm
def test_review_samples_marks_and_a_bad_verdict_leaves_search_and_training(served: Served, decomp_repo: DecompRepo,
                                                                          tmp_path: Path) -> None:
    config, home, repo = teacher_config(served, tmp_path), tmp_path / "home", decomp_repo.path
    report = enrich_repo(repo, config, home=home, files=WALLCLOCK)
    assert report.enriched >= 2 and report.left == 0, report.failed
    listed = runner.invoke(app, ["enrich", "review", "--repo", str(repo), "--home", str(home), "--sample", "2", "--json"])
    assert listed.exit_code == 0, listed.output
    sample = json.loads(listed.output)
    assert len(sample) == 2 and all(s["written_by"] == "model-written (tiny)" for s in sample)
    text = runner.invoke(app, ["enrich", "review", "--repo", str(repo), "--home", str(home), "--sample", "1"])
    assert "model-written" in text.output and "cra enrich review --mark" in text.output
    bad = sample[0]
    marked = runner.invoke(app, ["enrich", "review", "--home", str(home), "--mark", bad["id"][:8], "--bad",
                                 "--note", "wrong about the hands"])
    assert marked.exit_code == 0 and "marked bad" in marked.output
    again = enrich_repo(repo, config, home=home, files=WALLCLOCK, limit=1)
    assert again.unchanged == report.enriched - 1  # the rejected answer no longer counts: its function is asked again
    added = enrichment_examples(repo, config, home)
    examples = load_examples(home, stage="plan", source="enrichment")
    kept = {e.metadata["enrichment"] for e in examples}
    assert bad["id"] not in kept and added == len(examples) == 2 * len(kept) == 2 * len(stored(home)) - 2
    assert {e.metadata["kind"] for e in examples} == {"explanation", "change_recipe"}
    assert bad["id"] not in {e.metadata["enrichment"] for e in examples}
    index_repo(repo, home=home, refresh=[WALLCLOCK])
    hit = next(h for h in search(repo, bad["name"], home=home, k=20).symbols if h.name == bad["name"])
    assert hit.summary == ""


def test_bad_requests_are_refused_with_what_to_do(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"set \[teacher\] endpoint"):
        enrich_repo(decomp_repo.path, load_config(tmp_path), home=tmp_path / "home")
    (tmp_path / "cra.toml").write_text(f'[models]\nmax_retries = 0\n[teacher]\n'
                                       f'endpoint = "http://127.0.0.1:{free_port()}/v1"\nmodel = "big-teacher"\n')
    config = load_config(tmp_path)
    with pytest.raises(InvalidInput, match="--limit must be at least 1"):
        enrich_repo(decomp_repo.path, config, home=tmp_path / "home", limit=0)
    with pytest.raises(InvalidInput, match="no indexed function is in a file matching"):
        enrich_repo(decomp_repo.path, config, home=tmp_path / "home", files="src/nothing_*.c")
    down = enrich_repo(decomp_repo.path, config, home=tmp_path / "home", files=WALLCLOCK, limit=2)
    assert down.enriched == 0 and len(down.failed) == 2  # a server that is down: each function says why, none stored
    assert stored(tmp_path / "home") == []
    result = runner.invoke(app, ["enrich", "review", "--home", str(tmp_path / "home"), "--mark", "ffff", "--good"])
    assert result.exit_code != 0 and "no enrichment 'ffff'" in result.output


@needs_vllm
def test_the_flow_runs_each_step_as_a_task(prefect_api, served: Served, decomp_repo: DecompRepo, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.enrich import run_enrich_flow

    config = teacher_config(served, tmp_path)
    report = run_enrich_flow(decomp_repo.path, config, home=str(tmp_path / "home"), limit=2, files=WALLCLOCK)
    assert report.enriched + len(report.failed) == 2

    async def task_names() -> list[str]:
        async with get_client() as client:
            runs = await client.read_flow_runs()
            flow_run = next(r for r in runs if r.parameters.get("files") == WALLCLOCK)
            tasks = await client.read_task_runs()
            return sorted(t.name for t in tasks if t.flow_run_id == flow_run.id)

    import asyncio

    names = asyncio.run(task_names())
    assert names == ["enrich-0", "enrich-1", "index", "reindex"][: 3 + (report.enriched > 0)]


def test_the_question_about_a_function_is_the_same_in_every_process(decomp_repo: DecompRepo, tmp_path: Path) -> None:
    import os
    import sys

    index_repo(decomp_repo.path, home=tmp_path / "home", embed=False)
    script = ("import json, sys; from pathlib import Path; from agent.project import Project; "
              "from bootstrap.enrich import plan_jobs\n"
              "with Project.open(Path(sys.argv[1]), sys.argv[2]) as p:\n"
              "    jobs, _, _ = plan_jobs(p, limit=4, files=sys.argv[3], home=sys.argv[2], body_chars=4000)\n"
              "print(json.dumps([j.messages for j in jobs], default=str))")
    asked = {subprocess.run([sys.executable, "-c", script, str(decomp_repo.path), str(tmp_path / "home"), WALLCLOCK],
                            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
                            env={**os.environ, "PYTHONHASHSEED": seed}).stdout for seed in ("1", "2", "3")}
    assert len(asked) == 1 and "Graph neighbours: " in asked.pop()  # the teacher's cache and answers stay put
