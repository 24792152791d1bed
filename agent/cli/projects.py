"""`cra projects`: the projects in the home, with their index, training examples, adapters and last run."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from agent.cli.common import (
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    Listing,
    RepoOpt,
    WideOpt,
    _config,
    _emit_json,
    _show,
    below,
    err,
    extra,
    ident,
    one_line_errors,
)


@one_line_errors
def projects(repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None, as_json: JsonOpt = False,
             wide: WideOpt = False) -> None:
    """The projects in the home: index state, examples per stage, active adapters and last run."""
    from dataclasses import asdict

    from agent.projects import overview
    from curation.datasets import counts_by_project

    found, examples = overview(home, _config(repo, config)), counts_by_project(home)
    if as_json:
        _emit_json([{**asdict(p), "examples": examples.get(p.name, {})} for p in found])
        return
    table = Listing((ident("project"), ident("checkout"), ident("last run"), extra("index"), below("examples"),
                     below("active adapters"), extra("family")), title=f"projects ({len(found)})", wide=wide)
    for p in found:
        counts = ", ".join(f"{stage} {n}" for stage, n in examples.get(p.name, {}).items()) or "none"
        adapters = ", ".join(f"{stage}: {escape(name)}" for stage, name in sorted(p.adapters.items())) or "the base"
        run = f"{p.last_run['id']} ({p.last_run['status']})" if p.last_run else "-"
        for i, (path, state) in enumerate(p.checkouts.items()):
            index = f"{state['commit'][:10]}" if state else "[yellow]not indexed[/]"
            first = i == 0
            table.add_row(escape(p.name), escape(path), run if first else "", index,
                          f"examples: {counts}" if first else "", f"adapters: {adapters}" if first else "",
                          escape(", ".join(p.families)) if first else "")
    _show(table)
    if "-" in examples:
        err.print(f"[dim]examples of no project (imported): {sum(examples['-'].values())}[/]")
