"""`cra projects`: the projects in the home, with their index, training examples, adapters and last run."""

from __future__ import annotations

from pathlib import Path

from rich.markup import escape

from agent.cli.common import (
    ConfigOpt,
    HomeOpt,
    JsonOpt,
    RepoOpt,
    _config,
    _emit_json,
    _table,
    one_line_errors,
    out,
)


@one_line_errors
def projects(repo: RepoOpt = Path("."), config: ConfigOpt = None, home: HomeOpt = None, as_json: JsonOpt = False) -> None:
    """The projects in the home: index state, examples per stage, active adapters and last run."""
    from dataclasses import asdict

    from agent.projects import overview
    from curation.datasets import counts_by_project

    found, examples = overview(home, _config(repo, config)), counts_by_project(home)
    if as_json:
        _emit_json([{**asdict(p), "examples": examples.get(p.name, {})} for p in found])
        return
    table = _table(("project", "checkouts (index)", "examples", "active adapters", "last run"),
                   title=f"projects ({len(found)})")
    for p in found:
        name = escape(p.name) + (f"\n[dim]family {escape(', '.join(p.families))}[/]" if p.families else "")
        where = "\n".join(escape(path) + (f" [dim]@ {state['commit'][:10]}[/]" if state else " [yellow]not indexed[/]")
                          for path, state in p.checkouts.items())
        counts = "\n".join(f"{stage} {n}" for stage, n in examples.get(p.name, {}).items()) or "-"
        adapters = "\n".join(f"{stage}: {escape(name)}" for stage, name in sorted(p.adapters.items())) or "base"
        run = (f"{p.last_run['id']} {p.last_run['status']}\n[dim]{escape(p.last_run['task'][:60])}[/]"
               if p.last_run else "-")
        table.add_row(name, where, counts, adapters, run)
    out.print(table)
    if "-" in examples:
        out.print(f"[dim]examples of no project (imported): {sum(examples['-'].values())}[/]")
