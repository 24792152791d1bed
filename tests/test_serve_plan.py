"""What `cra serve` decides before it starts anything: the vLLM command, adapter checks, LoRA limits."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import load_config
from agent.errors import ConfigError
from agent.llm.registry import promote, register
from agent.llm.serve import plan_serve
from agent.stages import RECIPES, STAGE_ROLES

runner = CliRunner()


def project(tmp_path: Path, tiny_models, *, provider: str = "vllm", rank_limit: int = 64) -> Path:
    (tmp_path / "cra.toml").write_text(f"""
[models.reasoning]
base = "{tiny_models.base}"
endpoint = "http://127.0.0.1:18123/v1"
provider = "{provider}"
[serve]
python = "/bin/sh"
max_lora_rank_limit = {rank_limit}
max_model_len = 512
extra_args = ["--kv-cache-memory-bytes", "256M"]
""")
    return tmp_path


def active(tiny_models, name: str, stage: str, path: Path, base: Path | None = None) -> None:
    register(None, path, name=name, stage=stage, base_model=str(base or tiny_models.base))
    promote(None, name)


def test_command_has_one_lora_module_per_stage_adapter_and_derived_limits(tmp_path: Path, tiny_models) -> None:
    active(tiny_models, "scope-r1", "scope", tiny_models.adapters[0])
    active(tiny_models, "plan-r1", "plan", tiny_models.rank16)
    plan = plan_serve(load_config(project(tmp_path, tiny_models)), "reasoning", STAGE_ROLES)
    cmd = plan.command
    assert cmd[:3] == ["/bin/sh", "-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--model") + 1] == str(tiny_models.base)
    assert cmd[cmd.index("--served-model-name") + 1] == "tiny"
    assert cmd[cmd.index("--port") + 1] == "18123"
    assert cmd[cmd.index("--max-loras") + 1] == "2"
    assert cmd[cmd.index("--max-lora-rank") + 1] == "64"  # the limit: room for any candidate the gate may load
    start = cmd.index("--lora-modules") + 1
    modules = [json.loads(arg) for arg in cmd[start:start + 2]]
    assert {m["name"] for m in modules} == {"scope-r1", "plan-r1"}
    assert all(m["base_model_name"] == "tiny" and Path(m["path"]).is_dir() for m in modules)
    assert json.loads(cmd[cmd.index("--structured-outputs-config") + 1])["disable_any_whitespace"] is True
    assert cmd[-2:] == ["--kv-cache-memory-bytes", "256M"]
    assert plan.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_bad_adapters_are_set_aside_with_reasons_and_the_rest_served(tmp_path: Path, tiny_models) -> None:
    active(tiny_models, "scope-r1", "scope", tiny_models.adapters[0])
    active(tiny_models, "plan-r16", "plan", tiny_models.rank16)
    (tmp_path / "broken").mkdir()
    plan = plan_serve(load_config(project(tmp_path, tiny_models, rank_limit=8)), "reasoning", STAGE_ROLES)
    assert [a.name for a in plan.adapters] == ["scope-r1"]
    assert plan.rejected[0][0] == "plan-r16" and "above the limit of 8" in plan.rejected[0][1]
    assert plan.command[plan.command.index("--max-lora-rank") + 1] == "8"


def test_no_adapters_still_serves_the_base(tmp_path: Path, tiny_models) -> None:
    plan = plan_serve(load_config(project(tmp_path, tiny_models)), "reasoning", STAGE_ROLES)
    assert plan.adapters == [] and "--lora-modules" not in plan.command and "--enable-lora" in plan.command
    # A server started before any adapter can still hot-load the first candidates the gate loads: the recipes train
    # rank 16 and 32 (it was sized for rank 8 and refused them).
    assert int(plan.command[plan.command.index("--max-lora-rank") + 1]) >= max(r.rank for r in RECIPES.values())


def test_dry_run_prints_the_command_and_the_refusals(tmp_path: Path, tiny_models) -> None:
    active(tiny_models, "scope-r1", "scope", tiny_models.adapters[0])
    active(tiny_models, "plan-r16", "plan", tiny_models.rank16)
    result = runner.invoke(app, ["serve", "--dry-run", "--repo", str(project(tmp_path, tiny_models, rank_limit=8))])
    assert result.exit_code == 0, result.output
    assert "not serving plan-r16" in result.output
    line = next(line for line in result.output.splitlines() if "vllm.entrypoints" in line)
    assert "--lora-modules" in shlex.split(line)


def test_ollama_serves_adapters_as_model_names(tmp_path: Path, tiny_models) -> None:
    active(tiny_models, "scope-r1", "scope", tiny_models.adapters[0])
    plan = plan_serve(load_config(project(tmp_path, tiny_models, provider="ollama")), "reasoning", STAGE_ROLES)
    assert plan.steps == [["ollama", "create", "scope-r1", "-f", str(plan.adapters[0].path / "Modelfile")]]
    result = runner.invoke(app, ["serve", "--repo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    modelfile = (plan.adapters[0].path / "Modelfile").read_text()
    assert modelfile == f"FROM {tiny_models.base}\nADAPTER {plan.adapters[0].path}\n"


def test_missing_vllm_interpreter_is_a_config_error(tmp_path: Path, tiny_models) -> None:
    cfg = project(tmp_path, tiny_models)
    (cfg / "cra.toml").write_text((cfg / "cra.toml").read_text().replace('"/bin/sh"', '"/nowhere/python"'))
    with pytest.raises(ConfigError, match="/nowhere/python does not exist"):
        plan_serve(load_config(cfg), "reasoning", STAGE_ROLES)


def test_ollama_create_runs_for_each_adapter_when_ollama_is_installed(
    tmp_path: Path, tiny_models, monkeypatch: pytest.MonkeyPatch,
) -> None:
    active(tiny_models, "scope-r1", "scope", tiny_models.adapters[0])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "ollama-calls.txt"
    fake = bin_dir / "ollama"  # records its arguments as the real CLI would receive them
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    result = runner.invoke(app, ["serve", "--repo", str(project(tmp_path, tiny_models, provider="ollama"))])
    assert result.exit_code == 0, result.output
    assert "now has scope-r1" in result.output
    (line,) = calls.read_text().splitlines()
    assert line.startswith("create scope-r1 -f ") and line.endswith("/scope-r1/Modelfile")


def test_a_base_trained_on_a_template_cra_supplies_is_served_with_it(tmp_path: Path, tiny_models) -> None:
    from agent.llm.chat import chat_format
    from tests.test_chat_format import FAMILIES, tokenizer_folder

    plan = plan_serve(load_config(project(tmp_path, tiny_models)), "reasoning", STAGE_ROLES)
    assert "--chat-template" not in plan.command  # the tiny model's own template marks its answers
    qwen = tmp_path / "Qwen3-4B"
    tokenizer_folder(qwen, *FAMILIES["Qwen3-4B"])
    (qwen / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    config = load_config(project(tmp_path, tiny_models))
    config.models.reasoning.base = str(qwen)
    cmd = plan_serve(config, "reasoning", STAGE_ROLES).command
    assert cmd[cmd.index("--chat-template") + 1] == chat_format(qwen).template


def test_starting_a_server_sweeps_the_scratch_of_servers_that_were_killed(tmp_path: Path, tiny_models) -> None:
    # a vLLM server killed rather than stopped (its cra gone, its home deleted) left its TMPDIR in /tmp for good
    import subprocess
    import tempfile
    import time

    from agent.llm.serve import SCRATCH_PREFIX, ServeFailed, start
    from agent.scratch import OWNER_FILE

    gone = subprocess.Popen(["true"])
    gone.wait()
    killed = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}reasoning-"))
    (killed / OWNER_FILE).write_text(str(gone.pid))
    unowned = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}coding-"))  # made by a cra before this change
    old = time.time() - 3600
    os.utime(unowned, (old, old))
    running = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}coding-"))
    (running / OWNER_FILE).write_text(str(os.getpid()))
    try:
        plan = plan_serve(load_config(project(tmp_path, tiny_models)), "reasoning", STAGE_ROLES)
        with pytest.raises(ServeFailed, match="exited"):  # /bin/sh is no vLLM: it exits at once
            start(plan, timeout_s=30)
        assert not killed.exists() and not unowned.exists() and running.is_dir()
    finally:
        shutil.rmtree(running, ignore_errors=True)
