"""`cra enrich`: a model's account of each function, and `cra enrich review` / `cra enrich examples`."""

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
    _config,
    _emit_json,
    _prefect_defaults,
    _show,
    err,
    one_line_errors,
    out,
)

enrich_app = typer.Typer(help="A model's account of each function: summary, description, tags, change recipe, "
                              "side effects, risks, caller notes, checks; kept by body hash.")


@enrich_app.callback(invoke_without_command=True)
@one_line_errors
def enrich(
    ctx: typer.Context,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most N functions this run (most central first).")] = None,
    files: Annotated[str | None, typer.Option("--files", help="Only functions in files matching this glob, e.g. 'src/battle_*.c'.")] = None,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as the Prefect flow cra-enrich.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Enrich the functions whose bodies changed since they were last enriched, with the [teacher] model."""
    if ctx.invoked_subcommand is not None:
        return
    cfg = _config(repo, config)
    with err.status("enriching…") as status:
        if prefect:
            _prefect_defaults()
            from flows.enrich import run_enrich_flow

            report = run_enrich_flow(repo, cfg, home=str(home) if home else None, limit=limit, files=files)
        else:
            from bootstrap.enrich import enrich_repo

            report = enrich_repo(repo, cfg, home=home, limit=limit, files=files,
                                 on_progress=lambda msg: status.update(escape(msg)))
    if as_json:
        _emit_json(report.as_dict())
        return
    out.print(f"[bold]{escape(report.project)}[/]: {report.considered} functions, {report.unchanged} unchanged since "
              f"enriched, {report.enriched} enriched, {len(report.failed)} failed"
              + (f", {report.left} left for the next run (--limit)" if report.left else ""))
    out.print(f"tokens {report.prompt_tokens}+{report.completion_tokens}, ${report.cost_usd:.4f}, "
              f"model time {report.model_seconds:.1f} s, {report.seconds:.1f} s in all")
    for where, why in list(report.failed.items())[:10]:
        out.print(f"  failed {escape(where)}: {escape(why)}")


@enrich_app.command("review")
@one_line_errors
def review(
    repo: RepoOpt = Path("."), home: HomeOpt = None,
    sample: Annotated[int, typer.Option("--sample", help="How many unreviewed enrichments to draw.")] = 10,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    mark: Annotated[str | None, typer.Option("--mark", help="An enrichment id (or prefix) to judge, with --good or --bad.")] = None,
    good: Annotated[bool, typer.Option("--good/--bad", help="The verdict for --mark; bad ones leave search and training.")] = True,
    note: Annotated[str | None, typer.Option("--note", help="Why, with --mark.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Draw a sample of model-written enrichments for a person to check, or record a verdict on one."""
    from agent import enrichment
    from agent.index.build import open_index

    if mark is not None:
        judged = enrichment.mark(home, mark, "good" if good else "bad", note)
        out.print(f"{judged.id} ({escape(judged.path)}:{escape(judged.name)}) marked {judged.review}")
        return
    paths, _ = open_index(repo, home)
    rows = enrichment.sample_for_review(home, paths.root.name, sample, seed)
    if as_json:
        _emit_json([r.as_dict() for r in rows])
        return
    if not rows:
        out.print("nothing to review: every enrichment of this project has a verdict, or `cra enrich` has not run")
        return
    for r in rows:
        f = r.fields
        out.print(f"[bold]{r.id}[/] {escape(r.path)}:{escape(r.name)} [dim]({enrichment.MODEL_MARK}, {escape(r.model)}, "
                  f"confidence {f.confidence:.2f}, complexity {r.complexity})[/]")
        table = Listing(("field", "written by the model"), show_header=False)
        for label, value in (("summary", f.summary), ("description", f.description), ("tags", ", ".join(f.intent_tags)),
                             ("change recipe", "\n".join(f"{i}. {s}" for i, s in enumerate(f.change_recipe, 1))),
                             ("side effects", "; ".join(f.side_effects)), ("risks", "; ".join(f.risks)),
                             ("callers", "; ".join(f"{c.name}: {c.note}" for c in f.caller_notes)),
                             ("checks", "; ".join(f.sanity_checks))):
            table.add_row(label, escape(value) or "-")
        _show(table)
    out.print("record a verdict: cra enrich review --mark ID --good|--bad [--note WHY]")


@enrich_app.command("examples")
@one_line_errors
def examples(repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Store explanation and change-recipe training examples (source "enrichment") from today's enrichments."""
    from bootstrap.enrich import EXAMPLES_STAGE, enrichment_examples

    added = enrichment_examples(repo, _config(repo, config), home)
    out.print(f"{added} new {EXAMPLES_STAGE} examples of source enrichment (`cra datasets list` shows them; "
              "`cra curate` mixes them into the next round)")
