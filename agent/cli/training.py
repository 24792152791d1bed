"""Adapters: `cra train`, `cra retrain`, `cra gate` and the registry, `cra adapters`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.common import (
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    Listing,
    RepoOpt,
    StageOpt,
    WideOpt,
    _config,
    _emit_json,
    _prefect_defaults,
    _show,
    err,
    extra,
    ident,
    one_line_errors,
    out,
)
from agent.errors import ModelUnavailable
from agent.llm.names import scrub_urls

adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
ProjectOpt = Annotated[str | None, typer.Option("--project", help="One project (as `cra projects` names it).")]
FamilyOpt = Annotated[str | None, typer.Option("--family", help="A family of projects from the config's [projects].")]


def _scope(project: str | None, family: str | None) -> str | None:
    """The scope `--project` or `--family` names (None for neither); both at once is an error."""
    from agent.errors import InvalidInput
    from agent.projects import family_scope, project_scope

    if project and family:
        raise InvalidInput("name one project (--project) or one family (--family), not both")
    return project_scope(project) if project else family_scope(family) if family else None


@one_line_errors
def train(
    stage: StageOpt,
    round_number: Annotated[int | None, typer.Option("--round", help="The round to train on (default: the latest).")] = None,
    steps: Annotated[int | None, typer.Option(help="Cap the optimiser steps (default: the stage's recipe).")] = None,
    project: ProjectOpt = None, family: FamilyOpt = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Train a stage's adapter from the frozen base on a round's mix (every project's, one project's or one family's);
    it is registered as a candidate."""
    from agent.extras import require
    from curation.retrain import train_from_round
    from curation.rounds import load_round

    require("train", "cra train")
    built = load_round(home, round_number)
    with err.status(f"training {stage} on round {built.number}…"):
        adapter = train_from_round(home, _config(repo, config), built, stage, steps=steps, project=project,
                                   project_family=family)
    dataset = adapter.metadata.get("dataset", {})
    shares = ", ".join(f"{name} {n}" for name, n in dataset.get("projects", {}).items())
    out.print(f"trained {escape(adapter.name)} (rank {adapter.rank}, {dataset.get('sft_examples')} examples: "
              f"{escape(shares)}; {adapter.metadata.get('seconds', 0):.1f} s); candidate: gate it with "
              f"`cra gate {escape(adapter.name)}`")


@one_line_errors
def retrain(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Only these stages (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Cap the optimiser steps per stage.")] = None,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as the Prefect flow cra-curate-retrain.")] = True,
) -> None:
    """One curate-and-retrain cycle: the next round, then train and gate every stage with something new."""
    from agent.extras import require

    require("train", "cra retrain")
    if prefect:
        _prefect_defaults()
        from flows.retrain import curate_retrain

        report = curate_retrain(str(repo), str(home) if home else None, str(config) if config else None, stage, steps)
    else:
        from dataclasses import asdict

        from curation.retrain import retrain as run_cycle

        report = asdict(run_cycle(home, _config(repo, config), stages=stage, max_steps=steps))
    out.print(f"round {report['round']} (snapshot {report['snapshot']}); collected {report['collected']}")
    table = Listing((ident("stage"), ident("adapter"), "promoted", "reason"), title="stages", title_in_pipe=True)
    for o in report["stages"]:
        table.add_row(o["stage"], escape(o["adapter"] or "-"), str(o["promoted"]), escape(o["reason"]))
    _show(table)


@one_line_errors
def gate_cmd(
    name: Annotated[str, typer.Argument(help="The candidate adapter.")],
    limit: Annotated[int | None, typer.Option(help="At most this many held-out examples.")] = None,
    project: Annotated[str | None, typer.Option("--project", help="Score on this project's held-out commits and "
                                                "promote for it only (a family's adapter: default every member).")] = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Score a candidate against what its project uses now and the base on held-out examples; promote it on a gain
    (a family's adapter: per member project)."""
    from agent.llm.registry import get
    from curation.gate import gate, scored_projects

    cfg = _config(repo, config)
    for scored in scored_projects(cfg, get(home, name), project):
        decision = gate(cfg, home, name, limit=limit, project=scored)
        active = f"{decision.active.score:.3f}" if decision.active else "-"
        where = f" in {escape(scored)}" if scored else ""
        out.print(f"{escape(name)} ({decision.stage}){where}: candidate {decision.candidate.score:.3f}, active {active}, "
                  f"base {decision.base.score:.3f} on {decision.candidate.examples} held-out examples")
        out.print(("[green]promoted[/]: " if decision.promoted else "[yellow]not promoted[/]: ") + escape(decision.reason))


@adapters_app.command("list")
@one_line_errors
def adapters_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage's adapters.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Registered adapters with their stage, base, rank and status."""
    from agent.llm.registry import list_adapters

    adapters = list_adapters(home, stage=stage)
    if as_json:
        _emit_json([{**vars(a), "status": a.status, "trained_for": a.trained_for} for a in adapters])
        return
    table = Listing((ident("name"), "stage", "status", ident("trained for"), extra("active in"), extra("base"),
                     extra("rank"), extra("created"), extra("promoted")), title=f"adapters ({len(adapters)})", wide=wide)
    for a in adapters:
        style = {"active": "green", "retired": "dim"}.get(a.status, "")
        table.add_row(escape(a.name), a.stage, f"[{style}]{a.status}[/]" if style else a.status, escape(a.trained_for),
                      escape(", ".join(a.active_in) or "-"), escape(a.base_model), str(a.rank),
                      f"{a.created_at:%Y-%m-%d %H:%M}", f"{a.promoted_at:%Y-%m-%d %H:%M}" if a.promoted_at else "-")
    _show(table)


@adapters_app.command("add")
@one_line_errors
def adapters_add(
    path: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter folder.")],
    name: Annotated[str, typer.Option(help="Its name in the registry and on the server.")],
    stage: Annotated[str, typer.Option(help="The stage it was trained for.")],
    base: Annotated[str | None, typer.Option(help="The base it was trained on (default: the one its adapter_config.json names).")] = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Copy an adapter's own files into the adapter store as a candidate."""
    from agent.llm.adapters import same_name
    from agent.llm.registry import register
    from agent.stages import stage_named

    cfg = _config(repo, config)
    role = stage_named(stage).role
    adapter = register(home, path, name=name, stage=stage, base_model=base)
    out.print(f"registered {escape(adapter.name)} for {adapter.stage} (rank {adapter.rank}, base {escape(adapter.base_model)}) as a candidate")
    served = cfg.models.role(role).base
    if not same_name(adapter.base_model, served):
        err.print(f"[yellow]note:[/] the {role} role serves {escape(served)}, not "
                  f"{escape(adapter.base_model)}: this adapter is not used until that base is served")


@adapters_app.command("promote")
@one_line_errors
def adapters_promote(
    name: Annotated[str, typer.Argument(help="The adapter to make active for its stage.")],
    force: Annotated[bool, typer.Option("--force", help="Promote without a held-out evaluation (`cra gate` normally decides).")] = False,
    project: ProjectOpt = None, family: FamilyOpt = None,
    reload_server: Annotated[bool, typer.Option("--reload/--no-reload", help="Hot-load it into a running `cra serve`.")] = True,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Make an adapter active for its stage in a scope (default: the one it was trained for; the previous one there
    is retired from it) and hot-load it."""
    from agent.llm.registry import promote

    scope = _scope(project, family)
    adapter = promote(home, name, scope=scope, require_evaluation=not force)
    out.print(f"{escape(adapter.name)} is now the active {adapter.stage} adapter in {escape(scope or adapter.trained_for)}")
    if reload_server:
        _reload_role(adapter.stage, repo, config, home)


@adapters_app.command("rollback")
@one_line_errors
def adapters_rollback(
    stage: StageOpt,
    project: ProjectOpt = None, family: FamilyOpt = None,
    reload_server: Annotated[bool, typer.Option("--reload/--no-reload", help="Hot-load the change into a running `cra serve`.")] = True,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Retire a stage's active adapter (home-wide, or in one project or family) and bring back the one it replaced."""
    from agent.llm.registry import rollback
    from agent.projects import HOME_SCOPE
    from agent.stages import stage_named

    scope = _scope(project, family) or HOME_SCOPE
    adapter = rollback(home, stage, _config(repo, config).models.role(stage_named(stage).role).base, scope)
    out.print(f"{escape(adapter.name)} is the active {stage} adapter in {escape(scope)} again")
    if reload_server:
        _reload_role(stage, repo, config, home)


@adapters_app.command("export")
@one_line_errors
def adapters_export(
    name: Annotated[str, typer.Argument(help="The adapter to export.")],
    out_dir: Annotated[Path, typer.Option("--out", help="A new folder for the merged model.")],
    home: HomeOpt = None,
) -> None:
    """Merge an adapter into its base for Ollama or GGUF (export only: cra never trains on a merge)."""
    from curation.export import export_adapter

    with err.status(f"merging {name}…"):
        folder = export_adapter(home, name, out_dir)
    out.print(f"merged model written to {escape(str(folder))}")
    out.print(f"Ollama: `cd {escape(str(folder))} && ollama create {escape(name)} -f Modelfile`; GGUF: "
              f"`python llama.cpp/convert_hf_to_gguf.py {escape(str(folder))} --outfile {escape(name)}.gguf`")


def _reload_role(stage: str, repo: Path, config: Path | None, home: Path | None) -> None:
    """Hot-load a stage's adapters into its role's running server, if one runs."""
    from agent.llm.serve import reload
    from agent.stages import STAGE_ROLES

    try:
        report = reload(_config(repo, config), STAGE_ROLES[stage], STAGE_ROLES, home)
    except ModelUnavailable as exc:  # no server to reload is a note, not a failure; other errors fail the command
        err.print(f"[yellow]no running server to reload:[/] {escape(str(exc))}")
        return
    out.print(f"{escape(scrub_urls(report.endpoint))}: loaded {escape(', '.join(report.loaded) or 'nothing')}, "
              f"unloaded {escape(', '.join(report.unloaded) or 'nothing')}")
