"""`cra run` and `cra apply`, and the ledger of runs and model calls: `cra runs`, `cra calls`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.common import (
    Col,
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    Listing,
    RepoOpt,
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
from agent.errors import InvalidInput

runs_app = typer.Typer(help="Task runs: list, show, mark.", no_args_is_help=True)
calls_app = typer.Typer(help="Model calls logged in the ledger, newest first (like `llm logs`).")


@one_line_errors
def run(
    task: Annotated[str, typer.Argument(help="The change to make, e.g. \"Rename sub_80A1234 to CB2_InitWallClock\".")],
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    retrieval_only: Annotated[bool, typer.Option("--retrieval-only", help="Task analysis, scope and precision by index rules; no model.")] = False,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    include_dirty: Annotated[bool, typer.Option("--include-dirty", help="Start from the working state, uncommitted changes included.")] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as a Prefect flow (artifacts in the Prefect UI).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    wide: WideOpt = False,
) -> None:
    """Run the staged agent on a task: the result is a validated branch and patch; your checkout is not touched."""
    from agent.pipeline import RunOptions, TaskRun

    run_ = TaskRun(task, repo, config=_config(repo, config), home=home,
                   options=RunOptions(retrieval_only=retrieval_only, until=until, include_dirty=include_dirty))
    with err.status("preparing…") as status:
        run_.say = lambda msg: status.update(escape(msg))
        if prefect:
            _prefect_defaults()
            from flows.run import run_with_prefect

            outcome = run_with_prefect(run_)
        else:
            from agent.pipeline import drive

            outcome = drive(run_)
    if as_json:
        sys.stdout.write(json.dumps(outcome.as_dict(), indent=2) + "\n")
        raise typer.Exit(1 if outcome.success is False else 0)
    for note in outcome.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for name, result in outcome.results.items():
        _print_decisions(name, result.source, [d.model_dump() for d in result.decisions], result.notes, wide)
    if outcome.validation:
        _print_checks(outcome.validation.model_dump(), wide)
    colour = "green" if outcome.status == "succeeded" else "red"
    out.print(f"run [bold]{outcome.run_id}[/]: [{colour}]{outcome.status}[/]"
              + (f"; branch {escape(outcome.branch)}, patch {escape(str(outcome.patch))}" if outcome.branch else ""))
    if outcome.branch:
        out.print(f"[dim]apply it with `cra apply {outcome.run_id} --repo {escape(str(repo))}`[/]")
    if outcome.success is False:
        raise typer.Exit(1)


def _print_decisions(stage: str, source: str, decisions: list[dict], notes: list[str], wide: bool,
                     limit: int = 15) -> None:
    """A stage's decisions as a table (the first `limit`), then its notes."""
    table = Listing((ident("candidate"), "decision", extra("score"), extra("reason")), title=f"{stage} ({source})",
                    title_justify="left", title_in_pipe=True, wide=wide)
    for d in decisions[:limit]:
        table.add_row(escape(d["candidate"]), d["decision"], "" if d["score"] is None else f"{d['score']:.2f}", escape(d["reason"] or ""))
    if len(decisions) > limit:
        table.add_row(f"… {len(decisions) - limit} more")
    _show(table)
    for note in notes:
        out.print(f"  [yellow]{escape(note)}[/]")


def _print_checks(validation: dict, wide: bool) -> None:
    """The validation checks as a table, and which tree they were built in."""
    table = Listing((ident("check"), "result", "exit", extra("seconds")), title_justify="left", title_in_pipe=True,
                    title=f"validation (keep ROM: {validation['keep_rom']}, ROM changed: {validation['rom_changed']})",
                    wide=wide)
    for check in validation["checks"]:
        result = "[green]pass[/]" if check["passed"] else ("[red]timed out[/]" if check["timed_out"] else
                                                           f"[dim]skipped: {escape(check['skipped_reason'])}[/]" if check.get("skipped_reason") else "[red]fail[/]")
        table.add_row(check["name"], result, str(check["exit_code"]), f"{check['seconds']:.1f}")
    _show(table)
    timings = validation.get("timings") or {}
    if validation.get("base_tree"):
        tree = {"cached": "a copy of the kept tree built at the base commit",
                "built": f"the base commit built first ({timings.get('base_build', 0):.1f} s), then a copy of it",
                "fresh": "the base commit's files, built whole (keep_trees = 0)",
                "broken": "nothing: the base commit's own tree does not build"}[validation["base_tree"]]
        out.print(f"[dim]built in {tree}; preparing it took {timings.get('prepare', 0):.1f} s[/]")


@runs_app.command("list")
@one_line_errors
def runs_list(
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many runs.")] = 20,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Task runs, newest first."""
    from agent.runs import list_runs

    found = list_runs(home, limit=limit)
    if as_json:
        _emit_json([vars(r) for r in found])
        return
    table = Listing((ident("id"), "status", extra("success"), extra("verdict"), extra("kind"), extra("started"),
                     Col("task", clip=60)), title=f"runs ({len(found)})", wide=wide)
    for r in found:
        table.add_row(r.id, r.status, str(r.success), r.verdict or "", r.kind or "", f"{r.started_at:%Y-%m-%d %H:%M}",
                      escape(r.task))
    _show(table)


@runs_app.command("show")
@one_line_errors
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id or its first characters.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Each stage's inputs, decisions and outputs, the diff and the validation log."""
    from agent.runs import get_run

    found = get_run(home, run_id)
    if as_json:
        _emit_json(vars(found))
        return
    out.print(f"[bold]run {found.id}[/] {found.status} (success {found.success}, verdict {found.verdict or '-'}) "
              f"on {escape(found.repo)} @ {found.base_commit[:10]}")
    out.print(f"task: {escape(found.task)}")
    if found.error:
        out.print(f"[red]{escape(found.error)}[/]")
    for stage in found.stages:
        out.rule(f"{stage['stage']} ({stage['source']}, {stage['seconds']:.2f} s)")
        if stage["error"]:
            out.print(f"[red]{escape(stage['error'])}[/]")
        decisions = [d for d in found.decisions if d["stage"] == stage["stage"]]
        _print_decisions(stage["stage"], stage["source"], decisions, stage["notes"] or [], wide, limit=40)
        if stage["output"] is not None:
            out.print_json(json.dumps(stage["output"]))
    if found.validation:
        out.rule("validation")
        _print_checks(found.validation, wide)
        for check in found.validation["checks"]:
            if check["log_tail"] and not check["passed"]:
                out.print(f"[bold]{check['name']}[/] log tail:\n{escape(check['log_tail'])}")
    if found.patch and Path(found.patch).exists():
        out.rule(f"diff (branch {escape(found.branch or '-')})")
        out.print(escape(Path(found.patch).read_text(errors="replace")))


@runs_app.command("mark")
@one_line_errors
def runs_mark(
    run_id: Annotated[str, typer.Argument(help="A run id or its first characters.")],
    success: Annotated[bool | None, typer.Option("--success/--failure", help="Your verdict on the run.")] = None,
    home: HomeOpt = None,
) -> None:
    """Record a human verdict on a run, for curation."""
    from agent.runs import mark_run

    if success is None:
        raise InvalidInput("give --success or --failure")
    found = mark_run(home, run_id, "success" if success else "failure")
    out.print(f"run {found.id} marked {found.verdict}")


@one_line_errors
def apply_run(
    run_id: Annotated[str, typer.Argument(help="The run whose patch to apply.")],
    repo: RepoOpt = Path("."), home: HomeOpt = None,
) -> None:
    """Apply a run's patch to your working tree, refusing if it conflicts with your changes."""
    from agent.runs import get_run
    from agent.workspace import apply_patch

    found = get_run(home, run_id)
    if not found.patch:
        raise InvalidInput(f"run {found.id} has no patch ({found.status}); nothing to apply")
    changed = apply_patch(repo, Path(found.patch))
    out.print(f"applied run {found.id} to {escape(str(repo))}: {escape(', '.join(changed))}")


@calls_app.callback(invoke_without_command=True)
@one_line_errors
def calls_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many calls.")] = 20,
    stage: Annotated[str | None, typer.Option(help="Only this stage's calls.")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run's calls.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only calls that ended in an error.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """List logged model calls, newest first."""
    if ctx.invoked_subcommand:
        return
    from agent.llm.calls import list_calls

    records = list_calls(home, limit=limit, stage=stage, run_id=run, failed=failed)
    if as_json:
        _emit_json([vars(r) for r in records])
        return
    table = Listing((ident("id"), extra("when"), ident("run"), "stage", extra("asked"), extra("answered"), "ok",
                     extra("repairs"), extra("retries"), extra("ms"), extra("tokens"), "note"),
                    title=f"model calls ({len(records)})", wide=wide)
    for r in records:
        note = r.error_type or ("fallback" if r.fallback_reason else "")
        tokens = f"{r.prompt_tokens or 0}+{r.completion_tokens or 0}"
        table.add_row(r.id, f"{r.created_at:%Y-%m-%d %H:%M:%S}", escape(r.run_id or ""), r.stage, escape(r.model_requested),
                      escape(r.model_answered or "-"), "yes" if r.schema_ok else "[red]no[/]", str(r.repairs), str(r.retries),
                      f"{r.latency_ms:.0f}", tokens, escape(note))
    _show(table)


@calls_app.command("show")
@one_line_errors
def calls_show(
    call_id: Annotated[str, typer.Argument(help="A call id or its first characters.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything logged about one call: messages, raw answer, parsed output, attempts."""
    from agent.llm.calls import get_call

    record = get_call(home, call_id)
    if as_json:
        _emit_json(vars(record))
        return
    out.print(f"[bold]call {record.id}[/] {record.created_at:%Y-%m-%d %H:%M:%S} stage {record.stage}, run {escape(record.run_id or '-')}")
    out.print(f"asked {escape(record.model_requested)} ({record.resolution}) at {escape(record.endpoint)}; "
              f"answered by {escape(record.model_answered or '-')}; {record.latency_ms:.0f} ms")
    if record.fallback_reason:
        out.print(f"[yellow]fallback:[/] {escape(record.fallback_reason)}")
    for message in record.messages:
        out.rule(message["role"])
        out.print(escape(message["content"]))
    out.rule("raw response")
    out.print(escape(record.raw_response or "(none)"))
    out.rule("parsed" if record.schema_ok else "[red]did not meet the schema[/]")
    if record.parsed is not None:
        out.print_json(json.dumps(record.parsed))
    if record.error:
        out.print(f"[red]{escape(record.error_type or 'error')}:[/] {escape(record.error)}")
    failed = [a for a in record.attempts if a.get("error")]
    if failed:
        out.rule("failed attempts")
        for n, attempt in enumerate(failed, 1):
            out.print(f"{n}. {escape(attempt['model'])}: {escape(attempt['error'].splitlines()[0][:200])}")
            if attempt.get("body"):
                out.print(f"   answered {attempt['status']}: {escape(attempt['body'])}")
    out.print(f"[dim]repairs {record.repairs}, retries {record.retries}, attempts {len(record.attempts)}, "
              f"tokens {record.prompt_tokens}+{record.completion_tokens}[/]")
