"""`cra enrich`: the teacher (any OpenAI-compatible model) writes each function's account, from its body, prototype,
callers, callees, graph neighbours and history note; only functions whose body changed since are asked about again.

The answers go to agent/enrichment.py's store, then into the index's search texts (the enriched files are indexed
again), the stages' candidates and, on request, training examples with their own source.
"""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent import enrichment
from agent.config import Config
from agent.enrichment import Enriched, Enrichment
from agent.errors import ConfigError, CraError, InvalidInput
from agent.index.build import index_repo, update_index
from agent.index.reader import Symbol, neighbors
from agent.project import Project
from agent.steps import DIRECT, Steps
from bootstrap.teacher import Teacher
from curation.datasets import Example, add_examples, family_for

LISTED = 8          # callers, callees and neighbours named in the prompt
EXAMPLES_STAGE = "plan"  # explanations and change recipes train the stage that reasons about changes
SYSTEM = ("You document functions of a matching C decompilation of a Game Boy Advance game (a pret project). Be "
          "concrete: name the state, hardware registers and data the function touches. Answer in JSON.")
ASK = ("Write: a one-line summary; a 3-6 sentence description (its intent, what it modifies, its side effects); up "
       "to 6 intent tags; a 3-6 step change recipe that keeps the ROM matching where the change must not alter it; "
       "its side effects; the risks of changing it; how its callers use it; sanity checks to run after a change; "
       "and your confidence in this account, from 0 to 1.")

Progress = Callable[[str], None]


@dataclass
class EnrichReport:
    """What one `cra enrich` did: functions considered, kept (body unchanged), enriched, failed; tokens and cost."""

    project: str
    considered: int = 0
    unchanged: int = 0
    enriched: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # "path:name" -> why
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    model_seconds: float = 0.0
    seconds: float = 0.0
    left: int = 0  # changed functions past --limit, for the next run

    def as_dict(self) -> dict:
        """A JSON-ready view."""
        return asdict(self)


@dataclass(frozen=True)
class Job:
    """One function to enrich: where it is, its body and the prompt about it."""

    symbol: Symbol
    digest: str
    complexity: int
    messages: list[dict[str, str]]
    fresh: bool = False  # a person rejected the answer this body got: ask again past the teacher's cache


def prompt(project: Project, sym: Symbol, body: str, note: str, body_chars: int) -> list[dict[str, str]]:
    """The question about one function: file, prototype, callers, callees, graph neighbours, history, source."""
    callers = list(dict.fromkeys(c["name"] for c in project.index.callers(sym.id) if c["name"]))[:LISTED]
    callees = list(dict.fromkeys(c["name"] for c in project.index.callees(sym.id) if c["name"]))[:LISTED]
    # Nearest first, then by id: the same prompt in every process (the walk's order follows string hashing).
    near = [i for i, hops in sorted(neighbors(project.index, [sym.id]).items(), key=lambda kv: (kv[1], kv[0]))
            if hops > 0][: LISTED * 3]
    named = {s.id: s.name for s in project.index.symbols_by_id(near)}
    around = [n for n in dict.fromkeys(named[i] for i in near if i in named)
              if n not in callers and n not in callees][:LISTED]
    shown = body if len(body) <= body_chars else body[:body_chars] + "\n/* … cut */"
    lines = [f"File: {sym.path}", f"Function: {sym.signature or sym.name}",
             f"Callers: {', '.join(callers) or '-'}", f"Callees: {', '.join(callees) or '-'}",
             f"Graph neighbours: {', '.join(around) or '-'}", f"History: {note or '-'}",
             f"Source:\n```c\n{shown}\n```", "", ASK]
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(lines)}]


def function_bodies(project: Project, files: str | None = None) -> dict[Symbol, str]:
    """Each indexed function (in files matching the glob `files`), most central first, with its text in the checkout."""
    functions = [s for s in project.index.functions() if files is None or fnmatch.fnmatch(s.path, files)]
    if files is not None and not functions:
        raise InvalidInput(f"no indexed function is in a file matching {files!r}; --files takes a glob such as "
                           "'src/wallclock.c' or 'src/battle_*.c'")
    bodies = enrichment.bodies_in_checkout(project.paths.repo, ((s.path, s.name, s.start_line, s.end_line)
                                                                for s in functions))
    return {sym: bodies[(sym.path, sym.name)] for sym in functions}


def plan_jobs(project: Project, *, limit: int | None, files: str | None, home: str | Path | None,
              body_chars: int) -> tuple[list[Job], int, int]:
    """The functions to ask about, most central first: (jobs, functions considered, unchanged since enriched)."""
    bodies = function_bodies(project, files)
    digests = {(s.path, s.name): enrichment.body_hash(body) for s, body in bodies.items()}
    done = enrichment.current(home, project.paths.root.name, digests)
    todo = [s for s in bodies if (s.path, s.name) not in done]
    chosen = todo if limit is None else todo[:limit]
    found = project.index.notes_of((s.name, s.path) for s in chosen)
    bad = enrichment.rejected(home, project.paths.root.name)
    jobs = []
    for sym in chosen:
        note = found[(sym.name, sym.path)].text() if (sym.name, sym.path) in found else ""
        digest = digests[(sym.path, sym.name)]
        jobs.append(Job(sym, digest, enrichment.complexity(bodies[sym]), prompt(project, sym, bodies[sym], note, body_chars),
                        (sym.path, sym.name, digest) in bad))
    return jobs, len(bodies), len(bodies) - len(todo)


def _ask(teacher: Teacher, project: str, job: Job) -> Enriched | str:
    """One function's enrichment, or why the model gave none."""
    started = time.perf_counter()
    try:
        labelled = teacher.ask("enrich", job.messages, Enrichment, fresh=job.fresh)
    except CraError as exc:
        return str(exc).splitlines()[0]
    sym = job.symbol
    model = teacher.settings.model
    return Enriched(enrichment.enrichment_id(project, sym.path, sym.name, job.digest, model, labelled.value), project,
                    sym.path, sym.name, job.digest, model, labelled.value, job.complexity,
                    labelled.prompt_tokens, labelled.completion_tokens, labelled.cost_usd,
                    round(time.perf_counter() - started, 3))


def enrich_repo(repo: Path, config: Config, *, home: str | Path | None = None, limit: int | None = None,
                files: str | None = None, on_progress: Progress | None = None, steps: Steps = DIRECT) -> EnrichReport:
    """Enrich the functions of `repo` whose bodies changed since they were last enriched (all, the first time), at most
    `limit` of them, in files matching the glob `files`; then index the enriched files again."""
    say = on_progress or (lambda _msg: None)
    if limit is not None and limit < 1:
        raise InvalidInput(f"--limit must be at least 1 (it is {limit})")
    try:
        teacher = Teacher(config, home)
    except ConfigError:
        raise ConfigError("no model is configured for enrichment: set [teacher] endpoint and model (any "
                          "OpenAI-compatible server, a local vLLM included)") from None
    started = time.perf_counter()
    steps.one("index", update_index, repo, home, say)
    with Project.open(repo, home) as project:
        report = EnrichReport(project.paths.root.name)
        jobs, report.considered, report.unchanged = plan_jobs(project, limit=limit, files=files, home=home,
                                                              body_chars=config.teacher.body_chars)
        report.left = report.considered - report.unchanged - len(jobs)
    say(f"enriching {len(jobs)} functions ({report.unchanged} unchanged since enriched)")
    answers = steps.each("enrich", _ask, [(teacher, report.project, job) for job in jobs],
                         concurrency=config.teacher.concurrency)
    kept = [a for a in answers if isinstance(a, Enriched)]
    for job, answer in zip(jobs, answers, strict=True):
        if isinstance(answer, str):
            report.failed[f"{job.symbol.path}:{job.symbol.name}"] = answer
    enrichment.store(home, kept)
    report.enriched = len(kept)
    report.prompt_tokens = sum(a.prompt_tokens for a in kept)
    report.completion_tokens = sum(a.completion_tokens for a in kept)
    report.cost_usd = round(sum(a.cost_usd for a in kept), 6)
    report.model_seconds = round(sum(a.seconds for a in kept), 3)
    if kept:
        say("indexing the enriched files again")
        steps.one("reindex", index_repo_refresh, repo, home, sorted({a.path for a in kept}))
    report.seconds = round(time.perf_counter() - started, 3)
    return report


def index_repo_refresh(repo: Path, home: str | Path | None, paths: list[str]) -> None:
    """Index `paths` again so their search texts carry the new summaries, the index built as it was."""
    with Project.open(repo, home) as project:
        state = project.state
    index_repo(repo, home=home, embed=state.embedder is not None, embedder=state.embedder,
               history_notes=state.history_notes, refresh=paths)


def enrichment_examples(repo: Path, config: Config, home: str | Path | None = None) -> int:
    """Store explanation (function -> summary and description) and change-recipe examples from the project's
    enrichments of today's function bodies (none marked bad), as training pairs of source "enrichment"; how many
    were new."""
    family = family_for(EXAMPLES_STAGE, config)
    with Project.open(repo, home) as project:
        bodies = {(s.path, s.name): body for s, body in function_bodies(project).items()}
        name, commit, top = project.paths.root.name, project.state.commit, str(project.paths.repo)
    digests = {key: enrichment.body_hash(body) for key, body in bodies.items()}
    examples = []
    for (path, function), e in enrichment.current(home, name, digests).items():
        code = f"```c\n{bodies[(path, function)][:config.teacher.body_chars]}\n```"
        meta = {"enrichment": e.id, "model": e.model, "written_by": enrichment.MODEL_MARK}
        for kind, ask, output in (
                ("explanation", f"Explain what {function} in {path} does and why.",
                 {"summary": e.fields.summary, "description": e.fields.description}),
                ("change_recipe", f"How would you change {function} in {path} safely?",
                 {"change_recipe": e.fields.change_recipe, "risks": e.fields.risks})):
            examples.append(Example(EXAMPLES_STAGE, "enrichment", family, [
                {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{ask}\n{code}"}],
                output, "train", top, commit, metadata={**meta, "kind": kind}))
    return add_examples(home, examples)
