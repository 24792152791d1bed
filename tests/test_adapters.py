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
from agent.llm.registry import get, list_adapters, promote, register, require_files

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
    unknown = runner.invoke(app, ["adapters", "add", str(tiny_models.adapters[0]), "--name", "x", "--stage", "scoping",
                                  "--base", base])
    assert unknown.exit_code != 0 and "unknown stage 'scoping'; stages are task_analysis" in unknown.output
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


def test_register_copies_only_the_adapters_own_files_and_refuses_links(tiny_models, tmp_path: Path) -> None:
    base = str(tiny_models.base)
    for name, link in (("passwd", Path("/etc/passwd")), ("up", Path(".."))):
        folder = tmp_path / name
        shutil.copytree(tiny_models.adapters[0], folder)
        (folder / name).symlink_to(link)
        with pytest.raises(BadAdapter, match="symbolic link"):
            register(None, folder, name=f"scope-{name}", stage="scope", base_model=base)
    linked = tmp_path / "linked-config"
    shutil.copytree(tiny_models.adapters[0], linked)
    (linked / "adapter_config.json").unlink()
    (linked / "adapter_config.json").symlink_to(tiny_models.adapters[0] / "adapter_config.json")
    with pytest.raises(BadAdapter, match="symbolic link"):
        register(None, linked, name="scope-linked", stage="scope", base_model=base)
    assert not adapter_store().exists() or not any(adapter_store().iterdir())  # nothing copied, nothing half-written
    extra = tmp_path / "extra"
    shutil.copytree(tiny_models.adapters[0], extra)
    (extra / "notes").mkdir()
    (extra / "notes" / "big.bin").write_bytes(b"x" * 1024)
    stored = register(None, extra, name="scope-extra", stage="scope", base_model=base)
    assert sorted(p.name for p in stored.path.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]


def test_an_adapter_is_registered_for_the_base_it_names_or_refused(tiny_models, tmp_path: Path) -> None:
    base = str(tiny_models.base)
    other = register(None, tiny_models.other_adapter, name="scope-other", stage="scope", base_model=None)
    assert other.base_model.endswith("tiny-small")  # its own base, not the configured one
    assert other.base_fingerprint != describe_base(base).fingerprint
    with pytest.raises(BadAdapter, match="trained on .*tiny-small, not on"):
        register(None, tiny_models.other_adapter, name="scope-other2", stage="scope", base_model=base)
    nameless = tmp_path / "nameless"
    shutil.copytree(tiny_models.adapters[0], nameless)
    config = json.loads((nameless / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (nameless / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(BadAdapter, match="name the base with --base"):
        register(None, nameless, name="scope-nameless", stage="scope", base_model=None)
    assert register(None, nameless, name="scope-named", stage="scope", base_model=base).base_model == base


def test_cli_add_refuses_a_slash_in_the_name_and_an_adapter_of_another_base(tiny_models, tmp_path: Path) -> None:
    from agent.config import load_config
    from agent.llm.resolve import resolve_all
    from agent.stages import STAGE_ROLES

    (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "{tiny_models.base}"\nendpoint = "http://127.0.0.1:9/v1"\n')
    slash = runner.invoke(app, ["adapters", "add", str(tiny_models.adapters[0]), "--name", "team/scope", "--stage",
                                "scope", "--repo", str(tmp_path)])
    assert slash.exit_code == 2 and "has a '/'" in slash.output and "Traceback" not in slash.output
    added = runner.invoke(app, ["adapters", "add", str(tiny_models.other_adapter), "--name", "scope-other", "--stage",
                                "scope", "--repo", str(tmp_path)])
    assert added.exit_code == 0 and "not used until that base is served" in " ".join(added.output.split())
    assert runner.invoke(app, ["adapters", "promote", "scope-other", "--force", "--no-reload", "--repo",
                               str(tmp_path)]).exit_code == 0
    scope = next(r for r in resolve_all(load_config(tmp_path), None, STAGE_ROLES) if r.stage == "scope")
    assert scope.adapter is None and scope.source == "base"  # never served on a base it was not trained on
