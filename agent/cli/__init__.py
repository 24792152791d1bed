"""The `cra` command line: a thin typer + rich shell over the library, one module per area of commands."""

from __future__ import annotations

import typer

from agent.cli import (
    data,
    dev,
    enrich,
    evals,
    index,
    projects,
    ranker,
    run,
    serving,
    training,
)

app = typer.Typer(help="cra: a staged coding agent for large legacy C codebases.", no_args_is_help=True)

# `cra --help` lists commands in the order they are added, then the groups in theirs.
app.command()(index.index)
app.command()(index.search)
app.command()(index.symbol)
app.command()(run.run)
app.command("apply")(run.apply_run)
app.command()(data.bootstrap)
app.command()(serving.models)
app.command()(projects.projects)
app.command()(data.curate)
app.command()(training.train)
app.command()(training.retrain)
app.command("gate")(training.gate_cmd)
app.add_typer(enrich.enrich_app, name="enrich")
app.add_typer(evals.eval_app, name="eval")
app.add_typer(ranker.ranker_app, name="ranker")
app.add_typer(run.calls_app, name="calls")
app.add_typer(serving.serve_app, name="serve")
app.add_typer(serving.base_app, name="base")
app.add_typer(training.adapters_app, name="adapters")
app.add_typer(dev.dev_app, name="dev")
app.add_typer(run.runs_app, name="runs")
app.add_typer(data.datasets_app, name="datasets")
