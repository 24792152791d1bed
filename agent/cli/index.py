"""`cra index`, `cra search`, `cra symbol`: build the index and look things up in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.common import (
    HomeOpt,
    JsonOpt,
    Listing,
    RepoOpt,
    WideOpt,
    _emit_json,
    _show,
    below,
    err,
    extra,
    ident,
    one_line_errors,
    out,
)

if TYPE_CHECKING:
    from agent.index.build import IndexReport


@one_line_errors
def index(
    path: Annotated[Path, typer.Argument(help="The decomp checkout to index.")] = Path("."),
    no_embed: Annotated[bool, typer.Option("--no-embed", help="Skip embeddings: a fast, text-and-graph-only index.")] = False,
    embedder: Annotated[str | None, typer.Option(help="Embedder: 'minilm' (default, offline) or a sentence-transformers name/path.")] = None,
    no_notes: Annotated[bool, typer.Option("--no-notes", help="Leave the history notes out of the symbols' search texts.")] = False,
    full: Annotated[bool, typer.Option("--full", help="Rebuild from scratch instead of updating incrementally.")] = False,
    wait: Annotated[float, typer.Option(help="Seconds to wait for another indexer of the same project.")] = 60.0,
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Index a checkout (incrementally when an index exists); never writes into the checkout."""
    from agent.index.build import index_repo

    with err.status("indexing…") as status:
        report = index_repo(path, home=home, embed=not no_embed, embedder=embedder, history_notes=not no_notes,
                            full=full, wait_s=wait,
                            on_progress=lambda msg: status.update(msg))
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


def _report_dict(report: IndexReport) -> dict:
    """The index report as JSON-ready data."""
    data = dict(vars(report))
    data["repo"] = str(report.repo)
    return data


@one_line_errors
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in words or identifiers.")],
    repo: RepoOpt = Path("."),
    k: Annotated[int, typer.Option("-k", help="Results per list.")] = 10,
    kind: Annotated[list[str] | None, typer.Option(help="Only symbols of this kind (repeatable).")] = None,
    path: Annotated[str | None, typer.Option(help="Only files under this path prefix.")] = None,
    module: Annotated[str | None, typer.Option(help="Only files in this directory.")] = None,
    ranker: Annotated[str | None, typer.Option(help="learned (the project's fitted ranker; the default when it has one), hybrid (the named default weights) or bm25.")] = None,
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print results as JSON.")] = False,
    wide: WideOpt = False,
) -> None:
    """Hybrid search of files and symbols, with scores and why."""
    from agent import retrieval

    results = retrieval.search(repo, query, home=home, k=k, ranker=ranker, kinds=kind, path=path, module=module)
    if as_json:
        _emit_json(results.as_dict())
        return
    files = Listing(("#", ident("file"), extra("score"), extra("why")), title=escape(f"files for {query!r}"), wide=wide)
    for i, hit in enumerate(results.files, 1):
        files.add_row(str(i), escape(hit.path), f"{hit.score:.3f}", _why(hit.why))
    _show(files)
    syms = Listing(("#", ident("symbol"), "kind", ident("where"), extra("score"), extra("why"), below("summary"),
                    below("history")), title="symbols", wide=wide)
    for i, hit in enumerate(results.symbols, 1):
        syms.add_row(str(i), escape(hit.name), hit.kind, escape(f"{hit.path}:{hit.line}"), f"{hit.score:.3f}", _why(hit.why),
                     escape(f"model-written: {hit.summary}") if hit.summary else "", escape(hit.history or ""))
    _show(syms)
    err.print(f"[dim]{results.elapsed_ms:.1f} ms, ranked by {results.ranker}[/]")


def _why(why: dict[str, float]) -> str:
    """A hit's signals, strongest first, without the zeros."""
    return ", ".join(f"{name} {value:.2f}" for name, value in sorted(why.items(), key=lambda kv: -kv[1]) if value > 0)


SHOWN_HISTORY = 12  # history entries `cra symbol` prints


@one_line_errors
def symbol(
    name: Annotated[str, typer.Argument(help="A function, macro, type or data name.")],
    repo: RepoOpt = Path("."),
    home: HomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Definition, prototype, callers and callees of a symbol."""
    from agent import enrichment
    from agent.index import reader

    infos = reader.lookup_symbol(repo, name, home=home)
    if as_json:
        _emit_json([i.as_dict() for i in infos])
        return
    for info in infos:
        sym = info.symbol
        if info.asked_as:
            out.print(f"{escape(info.asked_as)} has been renamed: it is now {escape(sym.name)}")
        out.print(f"[bold]{escape(sym.name)}[/] ({sym.kind}{', static' if sym.is_static else ''}) "
                  f"{escape(sym.path)}:{sym.start_line}-{sym.end_line}")
        if sym.signature:
            out.print(f"  [cyan]{escape(sym.signature)}[/]")
        if info.enrichment:
            e = info.enrichment
            out.print(f"  [dim]{enrichment.MODEL_MARK} ({escape(e.model)}, confidence {e.fields.confidence:.2f}"
                      f"{', reviewed ' + e.review if e.review else ', not reviewed'}):[/]")
            out.print(f"    {escape(e.fields.summary)}")
            out.print(f"    {escape(e.fields.description)}")
            if e.fields.change_recipe:
                out.print("    to change it: " + escape(" / ".join(e.fields.change_recipe)))
        if info.history:
            out.print("  history (from the commits, newest first):")
            entries = info.history.entries[::-1]
            for entry in entries[:SHOWN_HISTORY]:
                was = f" (was {escape(entry.old_name)})" if entry.old_name else ""
                out.print(f"    {entry.sha[:10]} {entry.event}{was}: {escape(entry.subject)}")
            if len(entries) > SHOWN_HISTORY:
                out.print(f"    … and {len(entries) - SHOWN_HISTORY} older (--json has them all)")
        for decl in info.declarations:
            out.print(f"  declared at {escape(decl)}")
        for label, rows in (("callers", info.callers), ("callees", info.callees)):
            table = Listing((ident("name"), "kind", "reference", ident("at")), title=f"{label} ({len(rows)})",
                            title_justify="left", title_in_pipe=True)
            for row in rows:
                table.add_row(escape(row["name"] or row["id"]), row["kind"], row["ref_kind"],
                              escape(f"{row['site_path']}:{row['site_line']}"))
            _show(table)
