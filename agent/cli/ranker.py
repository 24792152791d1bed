"""`cra ranker`: fit the project's ranker on its own history, and show what it was fitted on."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.common import (
    HomeOpt,
    JsonOpt,
    Listing,
    RepoOpt,
    _emit_json,
    _prefect_defaults,
    _show,
    err,
    ident,
    one_line_errors,
    out,
)

ranker_app = typer.Typer(help="The ranker fitted on the project's own history.", no_args_is_help=True)


@ranker_app.command("fit")
@one_line_errors
def fit(
    repo: RepoOpt = Path("."),
    until: Annotated[str, typer.Option("--until", help="Learn from the history up to this commit.")] = "HEAD",
    max_commits: Annotated[int | None, typer.Option("--max-commits", help="Only the newest N past commits (default: all).")] = None,
    anchor_commits: Annotated[int | None, typer.Option("--anchor-commits", help="Read each past commit's code at most N commits before it (default 500).")] = None,
    full: Annotated[bool, typer.Option("--full", help="Read every past commit again instead of only those since the last fit.")] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as the Prefect flow cra-ranker-refit.")] = True,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit (or refit with the commits since the last fit) the ranker on the project's history; kept only when it
    ranks the newest past commits better than the default weights."""
    from agent.config import project_paths
    from agent.repo import require_repo
    from bootstrap.ranking import ANCHOR_COMMITS, fit_ranker

    top = require_repo(repo)
    every = anchor_commits or ANCHOR_COMMITS
    with err.status("fitting the ranker…") as status:
        if prefect:
            _prefect_defaults()
            from flows.ranker import ranker_flow

            report = ranker_flow(str(top), str(home) if home else None, until=until, max_commits=max_commits,
                                 every=every, full=full)
        else:
            report = fit_ranker(top, project_paths(top, home).ranker, until=until, max_commits=max_commits,
                                every=every, full=full, on_progress=lambda msg: status.update(escape(msg)))
    if as_json:
        _emit_json(asdict(report))
        return
    verdict = {"fitted": "[green]fitted[/]: search ranks with it from now on",
               "too short": "[yellow]too little history[/]: search keeps the default weights",
               "no gain": "[yellow]no gain over the default weights[/]: search keeps them"}[report.status]
    out.print(f"{escape(str(top))} up to {report.until[:10]}: {verdict}")
    out.print(f"{report.queries} past commits used ({report.new_commits} read now, "
              f"{len(report.anchors)} anchors), {report.timing_s.get('total', 0):.0f} s")
    table = Listing((ident("level"), "judged on", "default Acc@5", "learned Acc@5", "kept"), title="the newest past commits",
                    title_in_pipe=True)
    for level, judged in report.validation.items():
        table.add_row(level, str(judged["queries"]), _figure(judged, "default_acc@5"), _figure(judged, "learned_acc@5"),
                      "yes" if judged["kept"] else "no")
    _show(table)


def _figure(judged: dict, key: str) -> str:
    return f"{judged[key]:.3f}" if key in judged else "-"


@ranker_app.command("show")
@one_line_errors
def show(repo: RepoOpt = Path("."), home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """What the project's ranker was fitted on, and how it compared with the default weights."""
    from agent.config import project_paths
    from agent.ranker import read_provenance
    from agent.repo import require_repo

    top = require_repo(repo)
    meta = read_provenance(project_paths(top, home).ranker)
    if as_json:
        _emit_json(meta)
        return
    if meta is None:
        out.print(f"{escape(str(top))} has no fitted ranker: search uses the default weights (`cra ranker fit` learns "
                  "from the history)")
        return
    fitted = meta["fitted_on"]
    out.print(f"fitted {meta['fitted_at']} on {fitted['commits']} past commits, {fitted['oldest']['committed_at'][:10]} "
              f"to {fitted['newest']['committed_at'][:10]} (up to {meta['until'][:10]}), LightGBM {meta['lightgbm']}")
    for level, judged in meta["validation"].items():
        out.print(f"  {level}: Acc@5 {_figure(judged, 'learned_acc@5')} against the default weights' "
                  f"{_figure(judged, 'default_acc@5')} on the newest {judged['queries']}; "
                  f"{'kept' if judged['kept'] else 'not kept (default weights)'}")
