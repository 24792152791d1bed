"""Efficacy: does a stage's adapter, trained from the frozen base on a decomp's history, answer the newest commits
(never trained on) better than the base, and better than the stage's rules (retrieval alone)?

The pairs are bootstrapped (stored ones reused) and their prompts are model-agnostic, so they train any base: the
newest `train` of the training split train a fresh LoRA from the frozen base, then the rules' answers (stored with
each pair at bootstrap time), the base and the adapter are scored on the held-out split with the stage's own
measures, field by field, each with a bootstrap confidence interval, and the adapter's gains over the others with a
paired one. With a family of projects, a second adapter trained on as many pairs drawn evenly from the family's
projects, with the same recipe and steps, is scored on the same held-out commits: does the family's history help
this project more than its own?
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import psutil

from agent.config import Config, cra_home
from agent.errors import InvalidInput
from agent.eval.bench import PeakMemory
from agent.eval.serving import free_port
from agent.llm.adapters import describe_base
from agent.llm.registry import Adapter, get, list_adapters, require_files
from agent.llm.serve import load_adapter, plan_serve, start
from agent.projects import checkouts, members, register
from agent.repo import require_repo
from agent.stages import RECIPES, STAGE_ROLES, stage_named
from agent.stages.measures import mean_measure
from bootstrap.pairs import bootstrap_repo
from curation.datasets import Example, load_examples, model_family
from curation.gate import answer_all
from curation.training import MIN_SFT_EXAMPLES, Progress, train_adapter

RESAMPLES = 2000
LEVEL = 0.95
WORKERS = 4  # held-out prompts in flight at once: vLLM batches them
SCORE = "score"

Report = Callable[[str], None]


def confidence(values: list[float], *, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """The mean of `values` and its percentile-bootstrap confidence interval (LEVEL), resampling examples."""
    if not values:
        return {"mean": None, "low": None, "high": None, "n": 0}
    data = np.asarray(values, dtype=float)
    means = data[np.random.default_rng(seed).integers(0, len(data), (resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return {"mean": round(float(data.mean()), 4), "low": round(float(low), 4), "high": round(float(high), 4),
            "n": len(data)}


@dataclass(frozen=True)
class Scored:
    """One answerer's held-out answers, measured: a row of measures per example (None: no answer fit the schema)."""

    answerer: str
    fields: list[str]  # the stage's measures
    rows: list[dict[str, float | None] | None]

    def summary(self) -> dict:
        """The score and each field: mean and confidence interval over the examples it applies to; failures count 0."""
        zero = dict.fromkeys([SCORE, *self.fields], 0.0)
        rows = [row if row is not None else zero for row in self.rows]
        return {"answerer": self.answerer, "failures": sum(row is None for row in self.rows),
                "fields": {f: confidence([row[f] for row in rows if row.get(f) is not None])
                           for f in [SCORE, *self.fields]}}


def measure(stage: str, examples: list[Example], answers: list[dict | None], answerer: str) -> Scored:
    """Each answer measured against its example's gold answer with the stage's own measures, and its score."""
    measured = stage_named(stage)
    fields = list(measured.measures(examples[0].output, examples[0].output)) if examples else []
    rows: list[dict[str, float | None] | None] = []
    for example, answer in zip(examples, answers, strict=True):
        if answer is None:
            rows.append(None)
            continue
        fields = measured.measures(example.output, answer, example.messages[-1]["content"])
        rows.append({**fields, SCORE: mean_measure(fields)})
    return Scored(answerer, fields, rows)


def gain(better: Scored, than: Scored) -> dict:
    """The paired difference of the score, example by example (where both answered or failed), with its interval."""
    def score(row: dict | None) -> float:
        return 0.0 if row is None else float(row[SCORE])
    return confidence([score(a) - score(b) for a, b in zip(better.rows, than.rows, strict=True)])


def stage_examples(home: str | Path | None, repo: Path, stage: str, split: str, family: str) -> list[Example]:
    """The stage's bootstrapped examples of `repo` in `split`, one per commit, oldest first, for `family`.

    Bootstrapped prompts are written for no particular model, so a pair stored for another family trains this one.
    """
    by_commit: dict[str, Example] = {}
    for example in load_examples(home, stage=stage, split=split, source="synthetic"):
        if example.repo and Path(example.repo).resolve() == repo and example.commit_sha:
            if example.commit_sha not in by_commit or example.family == family:
                by_commit[example.commit_sha] = replace(example, family=family)
    return sorted(by_commit.values(), key=lambda e: (e.commit_date is None, e.commit_date, e.commit_sha))


def _adapter_name(stage: str, train: list[Example], recipe: dict, fingerprint: str) -> str:
    """The benchmark's adapter for this stage, data, recipe and base: trained once, reused by a rerun."""
    body = json.dumps([sorted(e.id for e in train), recipe, fingerprint], sort_keys=True)
    return f"{stage}-efficacy-{hashlib.sha256(body.encode()).hexdigest()[:10]}"


def _machine() -> dict:
    """The machine the figures were measured on."""
    return {"cpus": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "processor": platform.machine()}


def train_for_efficacy(home: str | Path | None, stage: str, base: str, train: list[Example], *, steps: int | None,
                       overrides: dict, on_progress: Report, project: str | None = None,
                       project_family: str | None = None) -> tuple[Adapter, dict]:
    """The stage's adapter on `train` from the frozen base (reused when this exact run trained it before), and what
    training took: seconds, peak memory, steps and the loss curve."""
    recipe = replace(RECIPES[stage], **overrides, **({"max_steps": steps} if steps is not None else {}))
    described = describe_base(base)
    name = _adapter_name(stage, train, asdict(recipe), described.fingerprint or base)
    if any(a.name == name for a in list_adapters(home)):
        adapter = get(home, name)
        on_progress(f"reusing {name}, trained before on the same examples")
        return adapter, {**_training_record(adapter), "reused": True}

    def report(p: Progress) -> None:
        on_progress(f"training {stage}: step {p.step}/{p.max_steps}, loss {p.loss:.3f}")

    with PeakMemory() as peak:
        adapter = train_adapter(home, stage=stage, base=base, sft=train, name=name, recipe=recipe, on_progress=report,
                                project=project, project_family=project_family)
    adapter = get(home, name)
    return adapter, {**_training_record(adapter), "peak_rss_mib": round(peak.peak / 2**20), "reused": False}


def _training_record(adapter: Adapter) -> dict:
    """What an adapter's metadata says of its training."""
    meta = adapter.metadata
    sft = meta.get("phases", {}).get("sft", {})
    return {"adapter": adapter.name, "seconds": meta.get("seconds"), "backend": meta.get("backend"),
            "steps": sft.get("steps"), "loss": sft.get("loss"), "recipe": meta.get("recipe"),
            "examples": meta.get("dataset", {}).get("sft_examples"), "projects": meta.get("dataset", {}).get("projects")}


def family_pairs(home: str | Path | None, config: Config, family: str, project: str, stage: str, base_family: str,
                 train: int) -> list[Example]:
    """`train` training pairs drawn evenly from the family's projects (the newest of each), every member bootstrapped
    in this home; a member short of its share leaves the rest to the others."""
    names = members(config, family)
    if project not in names:
        raise InvalidInput(f"project {project} is not in family {family} ({', '.join(names)}); add it under [projects]")
    paths = {c.project: c.path for c in checkouts(home) if c.path.exists()}
    missing = [name for name in names if name not in paths]
    if missing:
        raise InvalidInput(f"no checkout of {', '.join(missing)} was bootstrapped in this home; run `cra bootstrap "
                           f"--repo CHECKOUT --last N` for each first")
    pools = {name: stage_examples(home, paths[name], stage, "train", base_family) for name in names}
    chosen: list[Example] = []
    for left, name in enumerate(sorted(names, key=lambda n: len(pools[n])), start=0):
        share = (train - len(chosen)) // (len(names) - left)
        chosen += pools[name][-share:] if share else []
    if len(chosen) < train:
        raise InvalidInput(f"the family {family} has {len(chosen)} {stage} training pairs, {train} were asked for; "
                           "bootstrap more of its history or train on fewer (--train)")
    return sorted(chosen, key=lambda e: (e.commit_date is None, e.commit_date, e.commit_sha))


def _serving_config(config: Config, stage: str, base: str, adapter: str) -> Config:
    """`config` with the stage's role served on `base` at a free port, and the stage pinned to `adapter`."""
    role = stage_named(stage).role
    served = config.models.role(role).model_copy(update={"base": base, "endpoint": f"http://127.0.0.1:{free_port()}/v1"})
    return config.model_copy(update={"models": config.models.model_copy(update={role: served, "overrides": {stage: adapter}})})


def run_efficacy(repo: Path, *, config: Config, home: str | Path | None, stage: str, base: str | None = None,
                 train: int = 200, held_out: int | None = None, last: int = 400, steps: int | None = None,
                 project_family: str | None = None, on_progress: Report = lambda _: None) -> dict:
    """Bootstrap `repo`'s newest `last` kept commits, train `stage`'s adapter on the newest `train` training pairs
    from the frozen base, and score the rules, the base and the adapter on the held-out pairs (and, with
    `project_family`, an adapter trained on as many pairs from that family's projects)."""
    measured = stage_named(stage)
    if train < MIN_SFT_EXAMPLES or (held_out is not None and held_out < 1) or last < 1:
        raise InvalidInput(f"--train must be at least {MIN_SFT_EXAMPLES} (it is {train}), --held-out and --last at "
                           f"least 1 (they are {held_out} and {last})")
    top = require_repo(repo)
    base = base or config.models.role(measured.role).base
    described = describe_base(base)
    if described.path is None:
        raise InvalidInput(f"base model {base} has no local files; build or download it first (e.g. `cra base build "
                           "gemma3-270m DIR`) and pass its folder as --base")
    family = model_family(base)
    started = time.monotonic()
    on_progress(f"bootstrapping the newest {last} kept commits (stored pairs are reused)")
    booted = bootstrap_repo(top, config=config, home=home, last=last, on_progress=on_progress)
    bootstrap_s = round(time.monotonic() - started, 1)
    pool = stage_examples(home, top, stage, "train", family)
    evaluation = stage_examples(home, top, stage, "eval", family)[:held_out]
    if len(pool) < train:
        raise InvalidInput(f"{len(pool)} {stage} training pairs of {top} are stored, {train} were asked for; bootstrap "
                           "more history (--last) or train on fewer (--train)")
    if not evaluation:
        raise InvalidInput(f"no held-out {stage} pairs of {top}: bootstrap more history (--last)")
    chosen = pool[-train:]
    project = register(home, top, config).name
    adapter, training = train_for_efficacy(home, stage, base, chosen, steps=steps, project=project,
                                           overrides=config.training.overrides(), on_progress=on_progress)
    answerers = [("base", described.served_name), ("adapter", adapter.name)]
    if project_family:
        mixed = family_pairs(home, config, project_family, project, stage, family, train)
        shared, family_training = train_for_efficacy(home, stage, base, mixed, steps=steps,
                                                     project_family=project_family,
                                                     overrides=config.training.overrides(), on_progress=on_progress)
        answerers.append(("family adapter", shared.name))
    serving = _serving_config(config, stage, base, adapter.name)
    plan = plan_serve(serving, measured.role, STAGE_ROLES, home)
    on_progress(f"serving {described.served_name} with {', '.join(name for _, name in answerers[1:])}")
    server = start(plan, home, log=cra_home(home) / "eval" / f"efficacy-{stage}-vllm.log")
    try:
        if project_family:
            load_adapter(plan.endpoint, shared.name, require_files(home, shared))
        scored = []
        for answerer, model in answerers:
            on_progress(f"asking the {answerer} {len(evaluation)} held-out prompts")
            began = time.monotonic()
            answers = answer_all(serving, home, stage, model, evaluation, workers=WORKERS)
            scored.append((measure(stage, evaluation, answers, answerer), round(time.monotonic() - began, 1)))
    finally:
        server.stop()
    (base_scored, base_s), (adapter_scored, adapter_s), *more = scored
    with_rules = [e for e in evaluation if (e.metadata or {}).get("rules") is not None]
    rules = (measure(stage, evaluation, [(e.metadata or {}).get("rules") for e in evaluation], "rules")
             if measured.has_rules and len(with_rules) == len(evaluation) else None)
    answering = [s for s in (rules, base_scored, adapter_scored, *(m[0] for m in more)) if s is not None]
    return {
        "repo": str(top), "stage": stage, "machine": _machine(),
        "base": {"name": base, "fingerprint": described.fingerprint, "family": family},
        "bootstrap": {"last": last, "seconds": bootstrap_s, "derived_now": booted.derive.derived,
                      "new_examples": booted.derive.new_examples},
        "train": {**training, "pairs": len(chosen), "first_commit": chosen[0].commit_sha,
                  "last_commit": chosen[-1].commit_sha, "newest_date": str(chosen[-1].commit_date)},
        "held_out": {"pairs": len(evaluation), "first_commit": evaluation[0].commit_sha,
                     "oldest_date": str(evaluation[0].commit_date), "newest_date": str(evaluation[-1].commit_date),
                     "seconds": {"base": base_s, "adapter": adapter_s,
                                 **({"family adapter": more[0][1]} if more else {})}},
        "rules": None if rules else ("the stage has no rules" if not measured.has_rules else
                                     f"{len(evaluation) - len(with_rules)} held-out pairs were bootstrapped before "
                                     "rules' answers were stored with them; bootstrap into a fresh --home"),
        "answerers": {s.answerer: s.summary() for s in answering},
        "gains": {"adapter_over_base": gain(adapter_scored, base_scored),
                  **({"adapter_over_rules": gain(adapter_scored, rules)} if rules else {}),
                  **({"family_adapter_over_adapter": gain(more[0][0], adapter_scored),
                      "family_adapter_over_base": gain(more[0][0], base_scored)} if more else {})},
        "family": ({"name": project_family, "train": {**family_training, "pairs": len(mixed)}}
                   if project_family else None),
        "seconds": round(time.monotonic() - started, 1),
    }
