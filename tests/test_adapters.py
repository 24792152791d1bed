"""Adapter checks before serving, and the adapter registry's store and statuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent.cli import app
from agent.config import adapter_store, ledger_path
from agent.errors import BadAdapter, InvalidInput, UnsafeName
from agent.llm.adapters import check_adapter, describe_base
from curation.registry import get, list_adapters, promote, register, require_files

runner = CliRunner()


def test_adapter_on_its_own_base_passes(tiny_models) -> None:
    files = check_adapter(tiny_models.adapters[0], describe_base(str(tiny_models.base)), rank_limit=64)
    assert files.rank == 8
    assert "q_proj" in files.target_modules


def test_adapter_from_a_smaller_base_is_refused_by_name(tiny_models) -> None:
    with pytest.raises(BadAdapter, match="trained on .*tiny-small"):
        check_adapter(tiny_models.other_adapter, describe_base(str(tiny_models.base)), rank_limit=64)


def test_adapter_from_a_smaller_base_is_refused_by_shape_when_names_agree(tiny_models, tmp_path: Path) -> None:
    disguised = tmp_path / "disguised"
    shutil.copytree(tiny_models.other_adapter, disguised)
    config = json.loads((disguised / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_models.base)
    (disguised / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BadAdapter, match="does not fit .*shape"):
        check_adapter(disguised, describe_base(str(tiny_models.base)), rank_limit=64)


def test_fingerprint_mismatch_is_refused_even_with_the_same_name(tiny_models) -> None:
    base = describe_base(str(tiny_models.base))
    with pytest.raises(BadAdapter, match="different base"):
        check_adapter(tiny_models.adapters[0], base, rank_limit=64, trained_on="0" * 16)


def test_rank_above_the_limit_and_ranks_vllm_cannot_serve(tiny_models, tmp_path: Path) -> None:
    base = describe_base(str(tiny_models.base))
    with pytest.raises(BadAdapter, match="rank 16, above the limit of 8"):
        check_adapter(tiny_models.rank16, base, rank_limit=8)
    odd = tmp_path / "odd"
    shutil.copytree(tiny_models.adapters[0], odd)
    config = json.loads((odd / "adapter_config.json").read_text())
    config["r"] = 4
    (odd / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BadAdapter, match="rank 4; vLLM serves ranks 1, 8, 16"):
        check_adapter(odd, base, rank_limit=64)


def test_missing_and_corrupt_files(tiny_models, tmp_path: Path) -> None:
    base = describe_base(str(tiny_models.base))
    with pytest.raises(BadAdapter, match="does not exist"):
        check_adapter(tmp_path / "nowhere", base, rank_limit=64)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models.adapters[0], broken)
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadAdapter, match="cannot read adapter_model.safetensors"):
        check_adapter(broken, base, rank_limit=64)
    (broken / "adapter_config.json").write_text("{not json")
    with pytest.raises(BadAdapter, match="adapter_config.json is missing or unreadable"):
        check_adapter(broken, base, rank_limit=64)


def test_register_copies_into_the_store_and_promote_retires_the_previous(tiny_models) -> None:
    base = str(tiny_models.base)
    first = register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=base)
    assert first.status == "candidate" and first.path.parent == adapter_store()
    assert (first.path / "adapter_model.safetensors").read_bytes() == (tiny_models.adapters[0] / "adapter_model.safetensors").read_bytes()
    assert first.base_fingerprint == describe_base(base).fingerprint
    register(None, tiny_models.adapters[1], name="scope-r2", stage="scope", base_model=base)
    promote(None, "scope-r1")
    promote(None, "scope-r2")
    assert get(None, "scope-r1").status == "retired"
    assert get(None, "scope-r2").status == "active"
    assert [a.name for a in list_adapters(None, status="active")] == ["scope-r2"]


def test_register_refuses_bad_names_duplicates_and_stages(tiny_models) -> None:
    base = str(tiny_models.base)
    with pytest.raises(UnsafeName):
        register(None, tiny_models.adapters[0], name="../escape", stage="scope", base_model=base)
    with pytest.raises(InvalidInput, match="unknown stage"):
        register(None, tiny_models.adapters[0], name="x", stage="scoping", base_model=base)
    register(None, tiny_models.adapters[0], name="dup", stage="scope", base_model=base)
    with pytest.raises(InvalidInput, match="already registered"):
        register(None, tiny_models.adapters[1], name="dup", stage="scope", base_model=base)
    assert sorted(p.name for p in adapter_store().iterdir()) == ["dup"]  # nothing half-written


def test_a_registry_row_pointing_outside_the_store_is_refused(tiny_models) -> None:
    register(None, tiny_models.adapters[0], name="scope-r1", stage="scope", base_model=str(tiny_models.base))
    con = duckdb.connect(str(ledger_path()))
    con.execute("UPDATE adapters SET path = ? WHERE name = 'scope-r1'", [str(tiny_models.adapters[1])])
    con.close()
    with pytest.raises(UnsafeName, match="outside the adapter store"):
        require_files(None, get(None, "scope-r1"))


def test_cli_add_list_promote(tiny_models, tmp_path: Path) -> None:
    (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "{tiny_models.base}"\nendpoint = "http://127.0.0.1:9/v1"\n')
    added = runner.invoke(app, ["adapters", "add", str(tiny_models.adapters[0]), "--name", "scope-r1", "--stage", "scope",
                                "--repo", str(tmp_path)])
    assert added.exit_code == 0, added.output
    refused = runner.invoke(app, ["adapters", "promote", "scope-r1", "--repo", str(tmp_path)])
    assert refused.exit_code == 2 and "no evaluation" in refused.output
    promoted = runner.invoke(app, ["adapters", "promote", "scope-r1", "--force", "--repo", str(tmp_path)])
    assert promoted.exit_code == 0, promoted.output
    assert "no running server to reload" in promoted.output
    listed = runner.invoke(app, ["adapters", "list", "--json"])
    assert [(a["name"], a["status"], a["base_model"]) for a in json.loads(listed.output)] == [("scope-r1", "active", str(tiny_models.base))]
