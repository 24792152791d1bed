"""Training data: `cra bootstrap` (pairs from history), `cra curate` (rounds), `cra datasets`."""

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
    StageOpt,
    WideOpt,
    _config,
    _emit_json,
    _prefect_defaults,
    _show,
    below,
    err,
    extra,
    ident,
    one_line_errors,
    out,
)

datasets_app = typer.Typer(help="Training examples per stage: list, show, export, import.", no_args_is_help=True)


@one_line_errors
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
    data = asdict(report)
    if as_json:
        _emit_json(data)
        return
    out.print(f"[bold]{escape(report.repo)}[/]: {report.seen} commits seen, {report.kept} kept "
              f"(mining {report.mining_s:.1f} s)")
    dropped = Listing(("reason", "commits"), title="dropped by the filters", title_justify="left", title_in_pipe=True)
    for reason, n in sorted(report.dropped.items(), key=lambda kv: -kv[1]):
        dropped.add_row(escape(reason), str(n))
    _show(dropped)
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


@one_line_errors
def curate(home: HomeOpt = None, repo: RepoOpt = Path("."), config: ConfigOpt = None,
           seed: Annotated[int, typer.Option(help="Seed of the replay sample.")] = 0) -> None:
    """Build the next training round from logged runs and bootstrapped pairs, and print what it holds."""
    from curation.retrain import curate as next_round
    from curation.rounds import MIN_SFT_EXAMPLES, NothingNew

    built, collected = next_round(home, _config(repo, config), seed)
    out.print(f"collected {collected['logged_examples']} new examples and {collected['logged_pairs']} preference pairs "
              f"from logged runs, {collected['code_pairs']} code preference pairs")
    if built is None:
        raise NothingNew()
    table = Listing((ident("stage"), ident("family"), "new", "replay", "replay share", "dpo pairs", "pool",
                     extra("projects")), title=f"round {built.number} (snapshot {built.snapshot_hash})",
                    title_in_pipe=True)
    for (stage, family), mix in built.mixes.items():
        table.add_row(stage, family, str(len(mix.new)), str(len(mix.replay)), f"{mix.replay_share:.0%}", str(len(mix.dpo)),
                      str(mix.pool), escape(", ".join(f"{name} {n}" for name, n in mix.projects.items())))
    _show(table)
    for key, n in sorted(built.waiting.items()):
        out.print(f"{key}: {n} new examples wait for a later round (a round trains on at least {MIN_SFT_EXAMPLES})")


@datasets_app.command("list")
@one_line_errors
def datasets_list(home: HomeOpt = None, as_json: JsonOpt = False, wide: WideOpt = False) -> None:
    """Counts of training examples per stage, source, family, split and repo."""
    from curation.datasets import summary

    rows = summary(home)
    if as_json:
        _emit_json(rows)
        return
    table = Listing((ident("stage"), ident("source"), ident("family"), "split", below("project"), "examples",
                     extra("repo")), title=f"training examples ({sum(r['examples'] for r in rows)})", wide=wide)
    for r in rows:
        table.add_row(r["stage"], escape(r["source"]), r["family"], r["split"], escape(r["project"]), str(r["examples"]),
                      escape(r["repo"]))
    _show(table)


@datasets_app.command("show")
@one_line_errors
def datasets_show(
    stage: StageOpt, home: HomeOpt = None,
    limit: Annotated[int, typer.Option("-n", help="How many examples.")] = 2,
    split: Annotated[str, typer.Option(help="train or eval.")] = "train",
) -> None:
    """A few examples of one stage, as the chat a model is trained on."""
    from curation.datasets import load_examples

    examples = load_examples(home, stage=stage, split=split)
    out.print(f"{len(examples)} {split} examples for {stage}")
    for example in examples[-limit:]:
        out.rule(escape(f"{example.source} {example.commit_sha or ''} {example.family}"))
        for message in example.chat():
            out.print(f"[bold]{message['role']}[/]: {escape(message['content'][:1500])}")


@datasets_app.command("export")
@one_line_errors
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

    n = export(home, out_path, stage=stage, fmt=fmt, split=split, family=family)
    out.print(f"wrote {n} {stage} examples to {escape(str(out_path))}")


@datasets_app.command("import")
@one_line_errors
def datasets_import(
    path: Annotated[Path, typer.Argument(help="JSONL or Parquet rows with `messages` (the last the assistant's answer).")],
    stage: StageOpt,
    source: Annotated[str, typer.Option(help="A name for where the pairs come from, e.g. commitpackft.")],
    family: Annotated[str, typer.Option(help="The base-model family they are for, e.g. qwen2.5-coder.")],
    project: Annotated[str | None, typer.Option(help="The project they belong to (default: none, so only home-wide "
                                                     "rounds train on them).")] = None,
    home: HomeOpt = None,
) -> None:
    """Import open cold-start pairs (CommitPackFT-style, SRI-style) into the training tables."""
    from curation.datasets import import_file

    read, new = import_file(home, path, stage=stage, source=source, family=family, project=project)
    out.print(f"read {read} pairs, {new} new, as source imported:{escape(source)}")


@datasets_app.command("commits")
@one_line_errors
def datasets_commits(
    repo: Annotated[Path | None, typer.Option(help="Only this checkout's commits.")] = None,
    status: Annotated[str | None, typer.Option(help="derived or skipped.")] = None,
    code_failed: Annotated[bool, typer.Option("--code-failed", help="Only derived commits whose edits did not re-apply.")] = False,
    limit: Annotated[int, typer.Option("-n", help="How many records.")] = 50,
    home: HomeOpt = None, as_json: JsonOpt = False, wide: WideOpt = False,
) -> None:
    """What bootstrapping did with each commit: derived or skipped and why, and why a commit got no code pair."""
    from bootstrap.pairs import commit_log

    rows = commit_log(home, repo, status=status, code_failed=code_failed, limit=limit)
    if as_json:
        _emit_json(rows)
        return
    table = Listing((ident("commit"), "status", "pairs", extra("why")), title=f"bootstrapped commits ({len(rows)} shown)",
                    wide=wide)
    for r in rows:
        why = r["reason"] or (f"no code pair: {r['code_failed']}" if r["code_failed"] else "")
        table.add_row(r["commit"][:10], r["status"], str(r["pairs"]), escape(why))
    _show(table)
