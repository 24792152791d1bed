"""The TOML config (user file + project file) and per-stage model resolution against a real registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import load_config
from agent.errors import ConfigError, UnsafeName
from agent.llm.registry import promote, register
from agent.llm.resolve import resolve_all
from agent.stages import STAGE_ROLES

runner = CliRunner()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_name_the_design_bases(tmp_path: Path, isolated_cra_home: Path) -> None:
    (isolated_cra_home / "user-config.toml").unlink()  # the suite's own user file (carry = [])
    config = load_config(tmp_path)
    assert config.models.reasoning.base == "Qwen/Qwen3-4B"
    assert config.models.coding.base == "Qwen/Qwen2.5-Coder-3B-Instruct"
    assert config.sources == []
    assert config.validation.carry == ["tools/agbcc"] and config.validation.jobs == os.cpu_count()
    assert (config.validation.build, config.validation.compare) == (["make"], ["make", "compare"])


def test_project_file_overrides_user_file_key_by_key(tmp_path: Path, isolated_cra_home: Path) -> None:
    write(isolated_cra_home / "user-config.toml", """
[models.reasoning]
base = "user/base"
endpoint = "http://10.0.0.1:9000/v1"
[models.overrides]
plan = "user-plan"
""")
    write(tmp_path / "cra.toml", """
[models.reasoning]
endpoint = "http://127.0.0.1:7000/v1"
[models.overrides]
scope = "project-scope"
""")
    config = load_config(tmp_path)
    assert config.models.reasoning.base == "user/base"
    assert config.models.reasoning.endpoint == "http://127.0.0.1:7000/v1"
    assert config.models.overrides == {"plan": "user-plan", "scope": "project-scope"}
    assert len(config.sources) == 2


@pytest.mark.parametrize(("text", "needle"), [
    ("[models.reasoning]\nbase = 'b'\nendpoint = 'e'\nprovider = 'tgi'\n", "provider"),
    ("[models]\ntimeout = 3\n", "timeout"),
    ("[models\n", "not valid TOML"),
])
def test_bad_config_names_the_file_and_problem(tmp_path: Path, text: str, needle: str) -> None:
    write(tmp_path / "cra.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert needle in str(info.value)
    assert "cra.toml" in str(info.value)


def test_an_override_for_no_stage_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    # The config knows roles, not stages: the stage names are checked where the stages are routed to models.
    write(tmp_path / "cra.toml", "[models.overrides]\nscoop = 'x'\n")
    with pytest.raises(ConfigError, match=r"cra\.toml: models\.overrides: unknown stage scoop; stages are task_analysis"):
        resolve_all(load_config(tmp_path), None, STAGE_ROLES)


def test_cli_reports_bad_config_with_config_exit_code(tmp_path: Path) -> None:
    write(tmp_path / "cra.toml", "[models.overrides]\nscoop = 'x'\n")
    result = runner.invoke(app, ["models", "--repo", str(tmp_path)])
    assert result.exit_code == 78
    assert "unknown stage scoop" in result.output


def tiny_config(tmp_path: Path, base: Path, extra: str = "", coding: str = "") -> Path:
    return write(tmp_path / "cra.toml", f"""
[models.reasoning]
base = "{base}"
endpoint = "http://127.0.0.1:1/v1"
[models.coding]
base = "{base}"
endpoint = "http://127.0.0.1:2/v1"
{coding}
{extra}""")


def test_resolution_order_override_adapter_role_default_base(tmp_path: Path, tiny_models) -> None:
    register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=str(tiny_models.base))
    register(None, tiny_models.adapters[1], name="plan-r1", stage="plan", base_model=str(tiny_models.base))
    register(None, tiny_models.other_adapter, name="precision-small", stage="precision", base_model=str(tiny_models.other_base))
    for name in ("scope-r1", "plan-r1", "precision-small"):
        promote(None, name)
    tiny_config(tmp_path, tiny_models.base, '[models.overrides]\nplan = "my-hand-tuned-plan"\n', coding='default = "coder-general"')
    by_stage = {r.stage: r for r in resolve_all(load_config(tmp_path), None, STAGE_ROLES)}
    assert (by_stage["plan"].model, by_stage["plan"].source) == ("my-hand-tuned-plan", "override")
    assert (by_stage["scope"].model, by_stage["scope"].source) == ("scope-r1", "adapter")
    assert (by_stage["code"].model, by_stage["code"].source) == ("coder-general", "role-default")
    assert (by_stage["task_analysis"].model, by_stage["task_analysis"].source) == ("tiny", "base")
    # an adapter trained on another base is never chosen for this base's server
    assert (by_stage["precision"].model, by_stage["precision"].source) == ("tiny", "base")
    assert "precision-small" in by_stage["precision"].passed_over[0]


def test_override_naming_an_adapter_of_another_base_is_passed_over(tmp_path: Path, tiny_models) -> None:
    register(None, tiny_models.other_adapter, name="scope-small", stage="scope", base_model=str(tiny_models.other_base))
    tiny_config(tmp_path, tiny_models.base, "[models.overrides]\nscope = 'scope-small'\n")
    scope = next(r for r in resolve_all(load_config(tmp_path), None, STAGE_ROLES) if r.stage == "scope")
    assert scope.model == "tiny" and scope.source == "base"
    assert "trained on" in scope.passed_over[0]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/model", "a/b/c", "ok/..", "~root"])
def test_unsafe_override_names_are_refused(tmp_path: Path, name: str) -> None:
    write(tmp_path / "cra.toml", f"[models.overrides]\nscope = {json.dumps(name)}\n")
    with pytest.raises(UnsafeName):
        resolve_all(load_config(tmp_path), None, STAGE_ROLES)


def test_cra_models_prints_each_stage_with_why(tmp_path: Path, tiny_models) -> None:
    register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=str(tiny_models.base))
    promote(None, "scope-r1")
    tiny_config(tmp_path, tiny_models.base, "[models.overrides]\nplan = 'plan-x'\n")
    result = runner.invoke(app, ["models", "--repo", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["stage"]: r for r in json.loads(result.output)}
    assert list(rows) == ["task_analysis", "scope", "precision", "plan", "code"]
    assert rows["scope"]["reason"].startswith("active scope adapter")
    assert rows["plan"]["reason"] == "[models.overrides] plan = plan-x"
    table = runner.invoke(app, ["models", "--repo", str(tmp_path)])
    assert "[models.overrides]" in table.output and "plan-x" in table.output  # markup-like text is escaped


def test_the_documented_example_is_a_valid_config() -> None:
    example = Path(__file__).resolve().parents[1] / "docs" / "cra.example.toml"
    config = load_config(path=example)
    assert config.models.reasoning.base == "Qwen/Qwen3-4B" and config.serve.max_lora_rank_limit == 64
