"""Several decomps in one home: each checkout's project (a name and its root commit), examples and adapters kept per
project, resolution from the project's adapter to its family's to the home's to the base, the gate promoting per
project, `cra projects`, and a ledger from before projects migrating and resolving as it did."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from agent import runs
from agent.cli import app
from agent.config import Config, adapter_store, ledger_path, load_config
from agent.errors import ConfigError, InvalidInput
from agent.llm import registry
from agent.llm.resolve import resolve_all
from agent.llm.serve import plan_serve
from agent.projects import checkouts, identify, register
from agent.stages import STAGE_ROLES
from agent.store.ledger import LEDGER
from curation.datasets import Example, add_examples, counts_by_project, load_examples
from curation.gate import gate
from tests.fixtures.decomp import DecompRepo
from tests.fixtures.models import TinyModels, chat_reply, standin_server
from tests.fixtures.served import needs_vllm

runner = CliRunner()
STAGE = "task_analysis"
FAMILY = "pret-gba"
PROJECT_FILES = ("l009_checkouts", "l010_example_projects", "l011_adapter_scopes", "l012_pair_projects",
                 "l013_gate_projects")  # the migrations this change added


def checkout(template: DecompRepo, where: Path) -> Path:
    """A copy of the fixture decomp in `where` (its folder name is the project's name)."""
    shutil.copytree(template.path, where, symlinks=True)
    return where


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def configured(where: Path, tiny: TinyModels, extra: str = "") -> Config:
    """A project config serving the tiny model for both roles, with the pret-gba family."""
    (where / "cra.toml").write_text(f"""
[models]
max_retries = 0
[models.reasoning]
base = "{tiny.base}"
endpoint = "http://127.0.0.1:9/v1"
[models.coding]
base = "{tiny.base}"
endpoint = "http://127.0.0.1:9/v1"
[projects]
{FAMILY} = ["pokeemerald", "pokeruby"]
{extra}""")
    return load_config(where)


def example(repo: Path, task: str, split: str = "train", output: dict | None = None) -> Example:
    answer = output or {"kind": "rename", "key_terms": ["clock"], "symbols": ["InitWallClock"],
                        "files": ["src/wallclock.c"], "subsystems": [], "keep_rom": True}
    return Example(STAGE, "synthetic", "tiny", [{"role": "user", "content": task}], answer, split, str(repo),
                   git(repo, "rev-parse", "HEAD"))


def test_a_checkout_is_its_project_in_every_clone_and_a_name_is_never_given_to_two_histories(
        decomp_template: DecompRepo, tmp_path: Path) -> None:
    emerald = checkout(decomp_template, tmp_path / "pokeemerald")
    clone = tmp_path / "clones" / "my emerald"
    subprocess.run(["git", "clone", "-q", str(emerald), str(clone)], check=True)
    assert identify(clone).name == "my-emerald"  # its origin is a folder here: the clone's own folder names it
    git(clone, "remote", "set-url", "origin", "https://github.com/pret/pokeemerald.git")
    first, again = register(None, emerald), register(None, clone)
    assert first.name == again.name == "pokeemerald"  # the folder's name, and the origin's repository name
    assert first.root_commit == again.root_commit == git(emerald, "rev-list", "--max-parents=0", "HEAD")
    assert [(c.path.name, c.project) for c in checkouts(None)] == [("my emerald", "pokeemerald"),
                                                                    ("pokeemerald", "pokeemerald")]
    other = tmp_path / "elsewhere" / "pokeemerald"  # another history under the same name
    other.mkdir(parents=True)
    git(other, "init", "-q")
    (other / "main.c").write_text("int main(void) { return 0; }\n")
    git(other, "add", ".")
    git(other, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "Start")
    with pytest.raises(InvalidInput, match=r"set \[project\] name in .*cra.toml"):
        register(None, other)
    assert len(checkouts(None)) == 2  # nothing recorded for it
    (other / "cra.toml").write_text('[project]\nname = "emerald-fork"\n')
    assert register(None, other).name == "emerald-fork"
    (other / "cra.toml").write_text('[project]\nname = "../up"\n')
    with pytest.raises(ConfigError, match="cannot name a project"):
        identify(other)
    (other / "cra.toml").write_text(f'[projects]\n{FAMILY} = []\n')
    with pytest.raises(ConfigError, match="has no projects"):
        load_config(other)


def test_examples_and_adapters_stay_with_their_project_and_resolution_goes_project_family_home_base(
        decomp_template: DecompRepo, tiny_models: TinyModels, tmp_path: Path) -> None:
    emerald = checkout(decomp_template, tmp_path / "pokeemerald")
    ruby = checkout(decomp_template, tmp_path / "pokeruby")
    firered = checkout(decomp_template, tmp_path / "pokefirered")  # in no family
    config = configured(emerald, tiny_models, f'[serve]\npython = "{sys.executable}"\nmax_loras = 2\nmax_cpu_loras = 4\n')
    assert add_examples(None, [example(emerald, "Rename in emerald"), example(ruby, "Rename in ruby"),
                               example(ruby, "Rename in ruby, held out", "eval")]) == 3
    assert {e.project for e in load_examples(None, stage=STAGE, projects=["pokeruby"])} == {"pokeruby"}
    assert [e.messages[0]["content"] for e in load_examples(None, stage=STAGE, projects=["pokeemerald"])] == [
        "Rename in emerald"]
    assert counts_by_project(None) == {"pokeemerald": {STAGE: 1}, "pokeruby": {STAGE: 2}}

    base = str(tiny_models.base)
    own = registry.register(None, tiny_models.adapters[0], name="ta-emerald", stage=STAGE, base_model=base,
                            project="pokeemerald")
    shared = registry.register(None, tiny_models.adapters[1], name="ta-gba", stage=STAGE, base_model=base,
                               project_family=FAMILY)
    everyone = registry.register(None, tiny_models.adapters[2], name="ta-home", stage=STAGE, base_model=base)
    assert (own.trained_for, shared.trained_for, everyone.trained_for) == ("project:pokeemerald", f"family:{FAMILY}",
                                                                          "home")
    with pytest.raises(InvalidInput, match="trained on project pokeemerald's examples only"):
        registry.promote(None, "ta-emerald", scope="project:pokeruby")
    for name in ("ta-emerald", "ta-gba", "ta-home"):
        assert registry.promote(None, name).status == "active"

    def chosen(project: str | None) -> tuple[str, str]:
        found = next(r for r in resolve_all(config, None, STAGE_ROLES, project) if r.stage == STAGE)
        return found.model, found.source

    assert chosen("pokeemerald") == ("ta-emerald", "project")
    assert chosen("pokeruby") == ("ta-gba", "family")
    assert chosen("pokefirered") == ("ta-home", "adapter")
    assert chosen(None) == ("ta-home", "adapter")
    shown = runner.invoke(app, ["models", "--repo", str(ruby), "--config", str(emerald / "cra.toml"), "--json"])
    assert shown.exit_code == 0, shown.output
    row = next(r for r in json.loads(shown.output) if r["stage"] == STAGE)
    assert row["project"] == "pokeruby" and row["source"] == "family" and f"family {FAMILY}" in row["reason"]
    # one server serves every project's adapters, within the configured LoRA slots
    command = plan_serve(config, "reasoning", STAGE_ROLES).command
    modules = {json.loads(m)["name"] for m in command[command.index("--lora-modules") + 1:] if m.startswith("{")}
    assert modules == {"ta-emerald", "ta-gba", "ta-home"}
    assert command[command.index("--max-loras") + 1] == "2" and command[command.index("--max-cpu-loras") + 1] == "4"
    # without the home's adapter, a project in no family gets the base
    with duckdb.connect(str(ledger_path())) as con:
        con.execute("UPDATE promotions SET retired_at = now() WHERE adapter = 'ta-home'")
    assert chosen("pokefirered") == (tiny_models.base.name, "base")
    assert registry.get(None, "ta-home").status == "retired"
    # `cra projects` lists each checkout's project with its examples and adapters
    for repo in (emerald, ruby, firered):
        register(None, repo, config)
    runs.start_run(None, "20261207-0900-abcdef", task="Rename InitWallClock", repo=ruby,
                   base_commit=git(ruby, "rev-parse", "HEAD"), options={})
    listed = runner.invoke(app, ["projects", "--repo", str(emerald), "--json"])
    assert listed.exit_code == 0, listed.output
    by_name = {p["name"]: p for p in json.loads(listed.output)}
    assert set(by_name) == {"pokeemerald", "pokeruby", "pokefirered"}
    assert by_name["pokeruby"]["examples"] == {STAGE: 2} and by_name["pokeruby"]["families"] == [FAMILY]
    assert by_name["pokeruby"]["adapters"] == {STAGE: f"ta-gba (family:{FAMILY})"}
    assert by_name["pokeemerald"]["adapters"] == {STAGE: "ta-emerald (project:pokeemerald)"}
    assert by_name["pokefirered"]["adapters"] == {} and by_name["pokefirered"]["last_run"] is None
    assert by_name["pokeruby"]["last_run"]["id"] == "20261207-0900-abcdef"
    assert list(by_name["pokeruby"]["checkouts"].values()) == [None]  # not indexed yet
    table = runner.invoke(app, ["projects", "--repo", str(emerald)])
    assert table.exit_code == 0 and "pokefirered" in table.output


def test_the_gate_scores_a_family_adapter_on_each_members_commits_and_promotes_it_per_project(
        decomp_template: DecompRepo, tiny_models: TinyModels, tmp_path: Path) -> None:
    emerald = checkout(decomp_template, tmp_path / "pokeemerald")
    ruby = checkout(decomp_template, tmp_path / "pokeruby")
    gold = {"kind": "rename", "key_terms": ["clock"], "symbols": ["InitWallClock"], "files": ["src/wallclock.c"],
            "subsystems": [], "keep_rom": True}
    wrong = {"kind": "feature", "key_terms": [], "symbols": ["Nothing"], "files": [], "subsystems": [], "keep_rom": False}
    add_examples(None, [example(emerald, f"emerald task {i}", "eval", gold) for i in range(3)]
                 + [example(ruby, f"ruby task {i}", "eval", gold) for i in range(3)])
    candidate = "ta-gba-r1"
    registry.register(None, tiny_models.adapters[0], name=candidate, stage=STAGE, base_model=str(tiny_models.base),
                      project_family=FAMILY)

    def answer(body: dict) -> tuple[int, dict]:  # the candidate knows emerald, not ruby; the base knows neither
        if "messages" not in body:
            return 200, {}  # loading and unloading adapters
        knows = body["model"] == candidate and "emerald" in body["messages"][-1]["content"]
        return chat_reply(json.dumps(gold if knows else wrong), model=body["model"])

    with standin_server(answer) as server:
        cra_toml = tmp_path / "cra.toml"
        configured(tmp_path, tiny_models)
        cra_toml.write_text(cra_toml.read_text().replace("http://127.0.0.1:9/v1", server.url))
        config = load_config(tmp_path)
        with pytest.raises(InvalidInput, match="gate it for one member project at a time"):
            gate(config, None, candidate)
        result = runner.invoke(app, ["gate", candidate, "--config", str(cra_toml)])
        assert result.exit_code == 0, result.output
        assert "in pokeemerald: candidate 1.000" in result.output and "in pokeruby: candidate 0.000" in result.output
        assert registry.get(None, candidate).active_in == ("project:pokeemerald",)
        emerald_prompts = [r for r in server.requests if "messages" in r and "emerald" in r["messages"][-1]["content"]]
        assert len(emerald_prompts) == 6  # its three held-out commits, asked of the candidate and the base
        with duckdb.connect(str(ledger_path()), read_only=True) as con:
            decisions = con.execute("SELECT project, promoted FROM gate_decisions ORDER BY project").fetchall()
        assert decisions == [("pokeemerald", True), ("pokeruby", False)]
        resolved = {p: next(r for r in resolve_all(config, None, STAGE_ROLES, p) if r.stage == STAGE)
                    for p in ("pokeemerald", "pokeruby")}
        assert resolved["pokeemerald"].model == candidate and resolved["pokeemerald"].source == "project"
        assert resolved["pokeruby"].source == "base"
        with pytest.raises(InvalidInput, match="not in family"):
            gate(config, None, candidate, project="pokefirered")


def test_a_ledger_from_before_projects_migrates_in_place_and_resolves_as_before(
        decomp_template: DecompRepo, tiny_models: TinyModels, tmp_path: Path) -> None:
    emerald = checkout(decomp_template, tmp_path / "pokeemerald")
    config = configured(emerald, tiny_models)
    path = ledger_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    store = adapter_store()
    for name, source in (("ta-r1", tiny_models.adapters[0]), ("ta-r2", tiny_models.adapters[1])):
        shutil.copytree(source, store / name)
    with duckdb.connect(str(path)) as con:  # the schema as it was: every migration but this change's
        con.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at TIMESTAMP DEFAULT now())")
        for step in LEDGER.steps:
            if step.__name__ not in PROJECT_FILES:
                step(con)
                con.execute("INSERT INTO _migrations (name) VALUES (?)", [step.__name__])
        con.execute("INSERT INTO adapters VALUES ('ta-r1', ?, ?, NULL, ?, 8, 'retired', '2026-01-01', '2026-01-02', '{}'),"
                    " ('ta-r2', ?, ?, NULL, ?, 8, 'active', '2026-02-01', '2026-02-02', '{}')",
                    [STAGE, str(tiny_models.base), str(store / "ta-r1"), STAGE, str(tiny_models.base), str(store / "ta-r2")])
        old = example(emerald, "Rename in emerald")
        con.execute("INSERT INTO training_examples VALUES (?, ?, 'synthetic', 'tiny', ?, ?, NULL, 'train', ?, ?, NULL,"
                    " '{}', now())", [old.id, STAGE, str(emerald), old.commit_sha, json.dumps(old.messages),
                                     json.dumps(old.output)])
    assert {a.name: a.status for a in registry.list_adapters(None)} == {"ta-r1": "retired", "ta-r2": "active"}
    assert registry.get(None, "ta-r2").active_in == ("home",) and registry.get(None, "ta-r2").trained_for == "home"
    for project in (None, "pokeemerald", "pokeruby"):
        found = next(r for r in resolve_all(config, None, STAGE_ROLES, project) if r.stage == STAGE)
        assert (found.model, found.source, found.reason) == ("ta-r2", "adapter", f"active {STAGE} adapter (rank 8)")
    assert [e.project for e in load_examples(None, stage=STAGE)] == ["pokeemerald"]  # named from its checkout
    assert registry.rollback(None, STAGE, str(tiny_models.base)).name == "ta-r1"  # the promotion history came along
    assert registry.get(None, "ta-r1").status == "active" and registry.get(None, "ta-r2").status == "retired"


def test_a_family_round_mixes_its_projects_examples_and_records_each_ones_share(
        decomp_template: DecompRepo, tiny_models: TinyModels, tmp_path: Path) -> None:
    from curation.retrain import train_from_round
    from curation.rounds import build_round, load_round

    repos = {name: checkout(decomp_template, tmp_path / name) for name in ("pokeemerald", "pokeruby", "pokefirered")}
    config = configured(repos["pokeemerald"], tiny_models, "[training]\nmax_steps = 1\nbatch_size = 2\n")
    add_examples(None, [example(repo, f"Rename {i} in {name}") for name, repo in repos.items()
                        for i in range({"pokeemerald": 8, "pokeruby": 3, "pokefirered": 2}[name])])
    built = build_round(None)
    shares = {"pokeemerald": 8, "pokefirered": 2, "pokeruby": 3}
    assert built.mixes[(STAGE, "tiny")].projects == load_round(None).mixes[(STAGE, "tiny")].projects == shares
    family = train_from_round(None, config, built, STAGE, project_family=FAMILY)
    assert family.name == f"{STAGE}-{FAMILY}-r1" and family.project_family == FAMILY and family.project is None
    assert family.metadata["dataset"]["projects"] == {"pokeemerald": 8, "pokeruby": 3}  # firered is in no family
    own = train_from_round(None, config, built, STAGE, project="pokeemerald")
    assert own.name == f"{STAGE}-pokeemerald-r1" and own.trained_for == "project:pokeemerald"
    assert own.metadata["dataset"]["projects"] == {"pokeemerald": 8}
    with pytest.raises(InvalidInput, match="no task_analysis examples of pokegold"):
        train_from_round(None, config, built, STAGE, project="pokegold")
    with pytest.raises(InvalidInput, match="no family of projects named 'johto'"):
        train_from_round(None, config, built, STAGE, project_family="johto")
    result = runner.invoke(app, ["train", "--stage", STAGE, "--project", "pokeruby", "--family", FAMILY,
                                 "--repo", str(repos["pokeemerald"])])
    assert result.exit_code != 0 and "not both" in result.output


def test_the_efficacy_benchmarks_family_adapter_trains_on_pairs_drawn_evenly_from_its_projects(
        decomp_template: DecompRepo, tiny_models: TinyModels, tmp_path: Path) -> None:
    from agent.eval.efficacy import family_pairs

    repos = {name: checkout(decomp_template, tmp_path / name) for name in ("pokeemerald", "pokeruby", "pokefirered")}
    config = configured(repos["pokeemerald"], tiny_models)
    # each commit of the fixture's history is one bootstrapped pair per project; pokeruby has only two of them
    commits = git(repos["pokeemerald"], "rev-list", "--reverse", "HEAD").split()
    for name, repo in repos.items():
        register(None, repo, config)
        add_examples(None, [Example(STAGE, "synthetic", "tiny", [{"role": "user", "content": f"{name} {sha}"}],
                                    {"kind": "rename"}, "train", str(repo), sha)
                            for sha in commits[-(2 if name == "pokeruby" else 6):]])
    three = tmp_path / "three"
    three.mkdir()
    config_three = configured(three, tiny_models)
    config_three.projects[FAMILY].append("pokefirered")
    shutil.rmtree(repos["pokefirered"])  # a member whose checkout is gone
    with pytest.raises(InvalidInput, match="no checkout of pokefirered was bootstrapped"):
        family_pairs(None, config_three, FAMILY, "pokeemerald", STAGE, "tiny", 6)
    mixed = family_pairs(None, config, FAMILY, "pokeemerald", STAGE, "tiny", 8)
    shares = {name: sum(e.messages[0]["content"].startswith(name) for e in mixed) for name in repos}
    assert shares == {"pokeemerald": 6, "pokeruby": 2, "pokefirered": 0}  # ruby's two, the rest from emerald
    assert len({e.id for e in mixed}) == 8
    with pytest.raises(InvalidInput, match="has 8 task_analysis training pairs, 9 were asked for"):
        family_pairs(None, config, FAMILY, "pokeemerald", STAGE, "tiny", 9)
    with pytest.raises(InvalidInput, match="project pokefirered is not in family"):
        family_pairs(None, config, FAMILY, "pokefirered", STAGE, "tiny", 4)


@needs_vllm
def test_the_switch_benchmark_serves_each_projects_adapter_from_one_server_within_its_lora_slots(
        tmp_path: Path) -> None:
    from tests.fixtures.served import PYTHON

    out = tmp_path / "switch.json"
    result = runner.invoke(app, ["eval", "switch", "--python", PYTHON, "--rounds", "3", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert figures["adapters"] == ["scope-pokeemerald", "scope-pokefirered", "scope-pokeruby"]
    command = figures["command"]
    assert command[command.index("--max-loras") + 1] == "1" and command[command.index("--max-cpu-loras") + 1] == "2"
    assert {name: mode["requests"] for name, mode in figures["modes"].items()} == {
        "cold (first request, read from disk)": 2, "warm (same adapter again)": 3, "switch, both in CPU memory": 3,
        "switch, evicted from CPU memory": 3}
    assert all(mode["median_ms"] > 0 for mode in figures["modes"].values())
    assert "cold (first request, read from disk)" in result.output
    assert not list(Path(tempfile.gettempdir()).glob(f"cra-bench-switch-{os.getpid()}-*"))  # its scratch is gone
