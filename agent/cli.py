"""The `cra` command line: a thin typer + rich shell over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.errors import CraError

app = typer.Typer(help="cra: a staged coding agent for large legacy C codebases.", no_args_is_help=True)
eval_app = typer.Typer(help="Benchmarks measured on a repository's own history.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

out = Console()
err = Console(stderr=True)

HomeOpt = Annotated[Optional[Path], typer.Option("--home", help="cra state folder (default: $CRA_HOME or ~/.local/share/cra).")]
RepoOpt = Annotated[Path, typer.Option("--repo", "-r", help="The decomp checkout.")]


def _fail(exc: CraError) -> None:
    err.print(f"[bold red]error:[/] {escape(str(exc))}")
    raise typer.Exit(exc.exit_code)


@app.command()
def index(
    path: Annotated[Path, typer.Argument(help="The decomp checkout to index.")] = Path("."),
    no_embed: Annotated[bool, typer.Option("--no-embed", help="Skip embeddings: a fast, text-and-graph-only index.")] = False,
    embedder: Annotated[Optional[str], typer.Option(help="Embedder: 'minilm' (default, offline) or a sentence-transformers name/path.")] = None,
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
    kind: Annotated[Optional[list[str]], typer.Option(help="Only symbols of this kind (repeatable).")] = None,
    path: Annotated[Optional[str], typer.Option(help="Only files under this path prefix.")] = None,
    module: Annotated[Optional[str], typer.Option(help="Only files in this directory.")] = None,
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
        sys.stdout.write(json.dumps(results.as_dict(), indent=2) + "\n")
        return
    files = Table(title=escape(f"files for {query!r}"))
    for col in ("#", "file", "score", "why"):
        files.add_column(col)
    for i, hit in enumerate(results.files, 1):
        files.add_row(str(i), escape(hit.path), f"{hit.score:.3f}", _why(hit.why))
    out.print(files)
    syms = Table(title="symbols")
    for col in ("#", "symbol", "kind", "where", "score", "why"):
        syms.add_column(col)
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
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Definition, prototype, callers and callees of a symbol."""
    from agent import retrieval

    try:
        infos = retrieval.lookup_symbol(repo, name, home=home)
    except CraError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps([i.as_dict() for i in infos], indent=2) + "\n")
        return
    for info in infos:
        out.print(f"[bold]{escape(info.name)}[/] ({info.kind}{', static' if info.is_static else ''}) "
                  f"{escape(info.path)}:{info.start_line}-{info.end_line}")
        if info.signature:
            out.print(f"  [cyan]{escape(info.signature)}[/]")
        for decl in info.declarations:
            out.print(f"  declared at {escape(decl)}")
        for label, rows in (("callers", info.callers), ("callees", info.callees)):
            table = Table(title=f"{label} ({len(rows)})", title_justify="left")
            for col in ("name", "kind", "reference", "at"):
                table.add_column(col)
            for row in rows:
                table.add_row(escape(row["name"] or row["id"]), row["kind"], row["ref_kind"],
                              escape(f"{row['site_path']}:{row['site_line']}"))
            out.print(table)


@eval_app.command("localize")
def eval_localize(
    repo: RepoOpt = Path("."),
    last: Annotated[Optional[int], typer.Option("--last", help="The newest N tasks of the history.")] = None,
    commits: Annotated[Optional[Path], typer.Option("--commits", help="A file with one commit SHA a line.")] = None,
    ranker: Annotated[Optional[list[str]], typer.Option("--ranker", help="hybrid (default), bm25, minilm, bm25+minilm; repeatable.")] = None,
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
    table = Table(title=f"localization on {len(tasks)} tasks")
    for col in ("ranker", "file Acc@1", "Acc@5", "Acc@10", "Recall@5", "MRR", "function Acc@5"):
        table.add_column(col)
    for name, summary in report["summary"].items():
        if isinstance(summary, dict) and "file_acc@5" in summary:
            table.add_row(name, *("-" if summary[key] is None else f"{summary[key]:.3f}" for key in (
                "file_acc@1", "file_acc@5", "file_acc@10", "recall@5", "mrr", "function_acc@5")))
    out.print(table)
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
