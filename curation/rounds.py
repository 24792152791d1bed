"""Curation: logged runs and bootstrapped pairs become training rounds, accumulated, with 10-20% replay.

A round is an immutable snapshot. Its training mix per stage and base-model family is the examples new since the
last round plus a replay sample from earlier rounds (15% of the mix, never outside 10-20% when earlier rounds
exist), and the preference pairs for DPO. Evaluation examples (the time-split hold-out) never enter a round. A stage
whose mix is too small to train waits: its new examples stay new until a later round has enough of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from agent.config import Config
from agent.errors import InvalidInput
from agent.llm.calls import CallRecord, calls_of_runs
from agent.llm.registry import active_adapters
from agent.projects import project_of
from agent.runs import judged_stages
from agent.store import transaction, utc_now
from agent.store.ledger import LEDGER, ledger
from curation.datasets import (
    Example,
    add_examples,
    family_for,
    load_examples,
    train_pools,
)

MIN_SFT_EXAMPLES = 8  # the smallest SFT mix a round hands to training
REPLAY_SHARE = 0.15
REPLAY_BOUNDS = (0.10, 0.20)
SELF_GENERATED_LAST = "plan"  # the plan stage trains on the agent's own runs only once the other reasoning stages have
EARLY_STAGES = ("task_analysis", "scope", "precision")


@LEDGER.migration
def l006_rounds(con: duckdb.DuckDBPyConnection) -> None:
    """Preference pairs, and training rounds: immutable snapshots of which examples each round trains on."""
    con.execute(
        """
        CREATE TABLE preference_pairs (
            id TEXT PRIMARY KEY,             -- hash of stage, prompt and both answers
            stage TEXT NOT NULL,
            source TEXT NOT NULL,            -- logged (validated vs failed run) | synthetic (post- vs pre-commit code)
            family TEXT NOT NULL,
            messages JSON NOT NULL,          -- the prompt
            chosen JSON NOT NULL,
            rejected JSON NOT NULL,
            split TEXT NOT NULL,
            provenance JSON,
            created_at TIMESTAMP NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE rounds (
            round INTEGER PRIMARY KEY,
            created_at TIMESTAMP NOT NULL,
            snapshot_hash TEXT NOT NULL,     -- hash of every (stage, family, kind, example) row of the round
            summary JSON NOT NULL            -- per stage and family: new, replay, dpo, pool, replay share
        )
        """
    )
    con.execute(
        """
        CREATE TABLE round_examples (
            round INTEGER NOT NULL,
            stage TEXT NOT NULL,
            family TEXT NOT NULL,
            kind TEXT NOT NULL,              -- new | replay (SFT examples) | dpo (preference pairs)
            example_id TEXT NOT NULL,
            PRIMARY KEY (round, stage, family, kind, example_id)
        )
        """
    )


@LEDGER.migration
def l012_pair_projects(con: duckdb.DuckDBPyConnection) -> None:
    """Each preference pair's project (pairs from before are left without one: no project's round takes them)."""
    con.execute("ALTER TABLE preference_pairs ADD COLUMN project TEXT")


class NothingNew(InvalidInput):
    """No stage has an example or preference pair that no round has used yet."""

    def __init__(self, waiting: dict[str, int] | None = None) -> None:
        held = "; ".join(f"{key}: {n} new, {MIN_SFT_EXAMPLES} needed" for key, n in sorted((waiting or {}).items()))
        super().__init__("nothing new to train on since the last round" + (f" ({held})" if held else "")
                         + ": bootstrap more history or log more runs")


@dataclass
class StageMix:
    """One stage's training mix in a round."""

    new: list[str] = field(default_factory=list)
    replay: list[str] = field(default_factory=list)
    dpo: list[str] = field(default_factory=list)
    pool: int = 0
    projects: dict[str, int] = field(default_factory=dict)  # SFT examples (new and replay) per project; '-': none

    @property
    def replay_share(self) -> float:
        """Replay's share of the SFT mix."""
        total = len(self.new) + len(self.replay)
        return len(self.replay) / total if total else 0.0


@dataclass
class Round:
    """A training round: its number, snapshot hash, and the mix per (stage, family)."""

    number: int
    snapshot_hash: str
    mixes: dict[tuple[str, str], StageMix]
    created_at: datetime
    waiting: dict[str, int] = field(default_factory=dict)  # "stage/family": new examples too few to train yet


def _pair_id(stage: str, messages: list, chosen: dict, rejected: dict) -> str:
    return hashlib.sha256(json.dumps([stage, messages, chosen, rejected], sort_keys=True).encode()).hexdigest()[:20]


def _add_pairs(home: str | Path | None, rows: list[tuple]) -> int:
    if not rows:
        return 0
    with ledger(home) as con, transaction(con):
        before = con.execute("SELECT count(*) FROM preference_pairs").fetchone()[0]
        con.executemany("INSERT OR IGNORE INTO preference_pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return con.execute("SELECT count(*) FROM preference_pairs").fetchone()[0] - before


def _pairs(rows: list[tuple]) -> list[tuple[Example, Example]]:
    return [(Example(stage, source, family, json.loads(m), json.loads(c)), Example(stage, source, family, json.loads(m), json.loads(r)))
            for stage, source, family, m, c, r in rows]


def preference_pairs_by_id(home: str | Path | None, ids: list[str],
                           projects: list[str] | None = None) -> list[tuple[Example, Example]]:
    """The stored preference pairs with these ids (of these projects, when named), as (chosen, rejected) examples."""
    if not ids:
        return []
    with ledger(home) as con:
        rows = con.execute("SELECT stage, source, family, messages, chosen, rejected FROM preference_pairs"
                           f" WHERE id IN ({', '.join('?' * len(ids))})"
                           " AND (?::TEXT[] IS NULL OR list_contains(?, project)) ORDER BY id",
                           [*ids, projects, projects]).fetchall()
    return _pairs(rows)


def load_pairs(home: str | Path | None, *, stage: str, family: str) -> list[tuple[Example, Example]]:
    """The stage's train-split preference pairs, as (chosen, rejected) examples."""
    with ledger(home) as con:
        rows = con.execute("SELECT stage, source, family, messages, chosen, rejected FROM preference_pairs"
                           " WHERE stage = ? AND family = ? AND split = 'train' ORDER BY id", [stage, family]).fetchall()
    return _pairs(rows)


@dataclass(frozen=True)
class LoggedStage:
    """One stage of a finished run, as curation reads it: the call the run used and the attempts it discarded."""

    run_id: str
    task: str
    repo: str
    commit: str
    good: bool
    stage: str
    prompt: list[dict]  # the stage's original prompt: the first attempt's messages
    used: dict | None  # the answer the run went on with (for code: the edits that applied); None if none did
    discarded: list[dict]  # answers of earlier attempts that did not apply (the code stage's retries)


def logged_stages(home: str | Path | None) -> list[LoggedStage]:
    """Every model-answered stage of the finished runs with a verdict, oldest run first."""
    stages = judged_stages(home)
    calls = calls_of_runs(home, sorted({s.run_id for s in stages}))
    found = []
    for s in stages:
        known = [calls[c] for c in s.call_ids if c in calls]
        if not known:
            continue
        # The code stage asks once per attempt and stops at the first edits that apply; the others use their last call.
        used_at = None if s.detail.get("failed") else (s.detail.get("attempts") or len(known)) - 1
        used = known[used_at] if used_at is not None and used_at < len(known) else None
        discarded = [c.parsed for c in known[:used_at if used_at is not None else len(known)] if _clean(c)]
        found.append(LoggedStage(s.run_id, s.task, s.repo, s.base_commit, s.success, s.stage, known[0].messages,
                                 used.parsed if used and _clean(used) else None, discarded))
    return found


def _clean(call: CallRecord) -> bool:
    """Whether a call's answer fit its schema without repairs."""
    return call.parsed is not None and call.schema_ok and call.repairs == 0


def collect_logged(home: str | Path | None, config: Config) -> tuple[int, int]:
    """Training data from the run log; return (sft, dpo).

    SFT: the answers successful runs went on with (for code, the edits that applied and validated), never an attempt
    the run discarded. DPO: within a successful run, each code attempt that did not apply (rejected) against the one
    that applied and validated (chosen), on the original prompt; across runs of one task, a failed run's answer
    against a successful run's.
    """
    examples, good, bad, pairs = [], {}, {}, []

    def pair(stage: str, messages: list, chosen: dict, rejected: dict, meta: dict, repo: str) -> list:
        return [_pair_id(stage, messages, chosen, rejected), stage, "logged", family_for(stage, config),
                json.dumps(messages), json.dumps(chosen), json.dumps(rejected), "train", json.dumps(meta), utc_now(),
                project_of(repo)]

    for s in logged_stages(home):
        if s.good and s.used is not None:
            examples.append(Example(s.stage, "logged", family_for(s.stage, config), s.prompt, s.used, "train", s.repo,
                                    s.commit, metadata={"run": s.run_id}))
            good.setdefault((s.task, s.stage), (s.prompt, s.used, s.run_id, s.repo))
            pairs += [pair(s.stage, s.prompt, s.used, rejected, {"run": s.run_id, "rejected_attempt": n + 1}, s.repo)
                      for n, rejected in enumerate(s.discarded) if rejected != s.used]
        elif not s.good and (s.used or s.discarded):
            bad.setdefault((s.task, s.stage), (s.used or s.discarded[-1], s.run_id))
    for key, (messages, chosen, won, repo) in good.items():
        if key in bad and bad[key][0] != chosen:
            rejected, lost = bad[key]
            pairs.append(pair(key[1], messages, chosen, rejected, {"chosen_run": won, "rejected_run": lost}, repo))
    return add_examples(home, examples), _add_pairs(home, pairs)


def code_preferences(home: str | Path | None) -> int:
    """DPO pairs from bootstrapped code pairs: the post-commit code (chosen) over leaving the pre-commit code (rejected)."""
    pairs = []
    for e in load_examples(home, stage="code", source="synthetic"):
        rejected = {"edits": [{**edit, "replace": edit["search"]} for edit in e.output["edits"]]}
        pairs.append([_pair_id("code", e.messages, e.output, rejected), "code", "synthetic", e.family,
                      json.dumps(e.messages), json.dumps(e.output), json.dumps(rejected), e.split,
                      json.dumps({"commit": e.commit_sha}), utc_now(), e.project])
    return _add_pairs(home, pairs)


def _trained_ids(con, stage: str, family: str) -> set[str]:
    return {r[0] for r in con.execute("SELECT example_id FROM round_examples WHERE stage = ? AND family = ? AND kind = 'new'",
                                      [stage, family]).fetchall()}


def replay_size(new: int, earlier: int, share: float = REPLAY_SHARE) -> int:
    """How many earlier examples to replay so they make `share` of the mix, kept within the 10-20% bounds."""
    if not new or not earlier:
        return 0
    low, high = REPLAY_BOUNDS
    wanted = round(share * new / (1 - share))
    wanted = max(math.ceil(low * new / (1 - low)), min(wanted, math.floor(high * new / (1 - high))))
    return min(earlier, wanted, math.floor(high * new / (1 - high)))


def build_round(home: str | Path | None, *, seed: int = 0, self_generated_plan: bool | None = None) -> Round:
    """Snapshot the next round: per stage and family, the new train examples, a replay sample, and the DPO pairs."""
    rng = random.Random(seed)
    pools = train_pools(home)
    if self_generated_plan is None:
        self_generated_plan = set(EARLY_STAGES) <= {a.stage for a in active_adapters(home)}
    with ledger(home) as con, transaction(con):
        number = (con.execute("SELECT max(round) FROM rounds").fetchone()[0] or 0) + 1
        mixes: dict[tuple[str, str], StageMix] = {}
        waiting: dict[str, int] = {}
        for (stage, family), examples in pools.items():
            own_runs = stage != SELF_GENERATED_LAST or self_generated_plan
            pool = [example_id for example_id, source, _ in examples if own_runs or source != "logged"]
            project_of = {example_id: project or "-" for example_id, _, project in examples}
            seen = _trained_ids(con, stage, family)
            mix = StageMix(new=[i for i in pool if i not in seen], pool=len(pool))
            earlier = sorted(seen & set(pool))
            mix.replay = sorted(rng.sample(earlier, replay_size(len(mix.new), len(earlier))))
            used = {r[0] for r in con.execute("SELECT example_id FROM round_examples WHERE stage = ? AND family = ? AND kind = 'dpo'",
                                              [stage, family]).fetchall()}
            mix.dpo = [r[0] for r in con.execute(
                "SELECT id FROM preference_pairs WHERE stage = ? AND family = ? AND split = 'train' ORDER BY id",
                [stage, family]).fetchall() if r[0] not in used]
            mix.projects = dict(sorted(Counter(project_of[i] for i in mix.new + mix.replay).items()))
            if len(mix.new) + len(mix.replay) >= MIN_SFT_EXAMPLES:
                mixes[(stage, family)] = mix
            elif mix.new or mix.dpo:
                waiting[f"{stage}/{family}"] = len(mix.new)
        if not mixes:
            raise NothingNew(waiting)
        rows = [(number, stage, family, kind, i) for (stage, family), mix in mixes.items()
                for kind, ids in (("new", mix.new), ("replay", mix.replay), ("dpo", mix.dpo)) for i in ids]
        snapshot = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:20]
        summary = {f"{stage}/{family}": {"new": len(m.new), "replay": len(m.replay), "dpo": len(m.dpo), "pool": m.pool,
                                         "replay_share": round(m.replay_share, 3), "projects": m.projects}
                   for (stage, family), m in mixes.items()}
        created = utc_now()
        con.execute("INSERT INTO rounds VALUES (?, ?, ?, ?)", [number, created, snapshot, json.dumps(summary)])
        con.executemany("INSERT INTO round_examples VALUES (?, ?, ?, ?, ?)", rows)
    return Round(number, snapshot, mixes, created, waiting)


def load_round(home: str | Path | None, number: int | None = None) -> Round:
    """A stored round (the latest when `number` is None)."""
    with ledger(home) as con:
        row = con.execute("SELECT round, snapshot_hash, created_at, summary FROM rounds"
                          " WHERE round = coalesce(?, (SELECT max(round) FROM rounds))", [number]).fetchone()
        if row is None:
            raise InvalidInput("no training round yet; run `cra curate` first" if number is None else f"no round {number}")
        mixes: dict[tuple[str, str], StageMix] = {}
        for stage, family, kind, example_id in con.execute(
                "SELECT stage, family, kind, example_id FROM round_examples WHERE round = ? ORDER BY 1, 2, 3, 4", [row[0]]).fetchall():
            getattr(mixes.setdefault((stage, family), StageMix()), kind).append(example_id)
    for key, stored in json.loads(row[3]).items():  # rounds from before projects have no shares
        if tuple(key.split("/", 1)) in mixes:
            mixes[tuple(key.split("/", 1))].projects = stored.get("projects", {})
    return Round(row[0], row[1], mixes, row[2])
