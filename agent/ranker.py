"""A ranker fitted on one project's history: LightGBM LambdaRank over the signals retrieval computes, for files and
for symbols, stored in the project's cra folder with where it came from."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import CraError

LEVELS = ("files", "symbols")
# Small trees: a few thousand queries with a few hundred candidates each, fitted on CPU. On the judging folds of
# both decomps' older history, 7 leaves of at least 50 candidates beat 15 of 20 (pokeemerald .502 vs .492 file
# Acc@5, pokeruby .404 vs .380) and 31.
PARAMS = {
    "objective": "lambdarank", "metric": "none", "learning_rate": 0.05, "num_leaves": 7,
    "min_data_in_leaf": 50, "feature_fraction": 0.9, "lambdarank_truncation_level": 20, "deterministic": True,
    "num_threads": 2, "seed": 7, "verbose": -1,
}
ROUNDS = (10, 20, 40, 80, 120, 160, 240, 320, 400)  # boosting rounds the judging folds choose among
FOLDS = 3          # the newest past commits judge a fit in this many time-ordered blocks,
FOLD_SHARE = 0.1   # each this share of them and scored by a model fitted on every commit before it


class RankerUnreadable(CraError):
    """A stored ranker could not be read back."""


@dataclass
class Group:
    """One query's candidates at one level: their features (rows) and whether each is what the commit changed."""

    query: str
    keys: list[str]
    features: np.ndarray  # (candidates, features)
    labels: np.ndarray    # 1 for a changed file (symbol), else 0
    gold: int             # how many files (symbols) the commit changed, among the candidates or not


@dataclass
class Fitted:
    """One level's model: the booster and the feature names it reads, in order."""

    booster: object  # lightgbm.Booster
    features: tuple[str, ...]

    def scores(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        """The model's score for each candidate (rows of named features; a missing one reads 0)."""
        return self.booster.predict(matrix(rows, self.features)) if rows else np.zeros(0)

    def contributions(self, rows: Sequence[dict[str, float]]) -> list[dict[str, float]]:
        """Per candidate, each feature's share of its score (TreeSHAP): the learned ranker's `why`."""
        if not rows:
            return []
        shap = self.booster.predict(matrix(rows, self.features), pred_contrib=True)
        return [{name: float(v) for name, v in zip(self.features, row[:-1]) if v} for row in shap]


@dataclass
class Ranker:
    """A project's fitted ranker: a model per level and the provenance it was stored with."""

    levels: dict[str, Fitted]
    provenance: dict = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        """Write each level's model and the provenance into `folder` (replacing what is there)."""
        folder.mkdir(parents=True, exist_ok=True)
        for level, fitted in self.levels.items():
            fitted.booster.save_model(str(folder / f"{level}.txt"))
        meta = {**self.provenance, "features": {level: list(f.features) for level, f in self.levels.items()}}
        tmp = folder / "ranker.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp.replace(folder / "ranker.json")


def read_provenance(folder: Path) -> dict | None:
    """What the stored ranker says about itself (ranker.json), or None when none is stored."""
    try:
        return json.loads((folder / "ranker.json").read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise RankerUnreadable(f"{folder / 'ranker.json'} cannot be read ({exc}); refit with `cra ranker fit --full`") from exc


def remove(folder: Path) -> None:
    """Drop the stored models (search goes back to the default weights); stored examples stay."""
    for name in ("ranker.json", *(f"{level}.txt" for level in LEVELS)):
        (folder / name).unlink(missing_ok=True)


def matrix(rows: Sequence[dict[str, float]], features: Sequence[str]) -> np.ndarray:
    """Rows of named features as a float matrix in the given feature order."""
    return np.array([[row.get(name, 0.0) for name in features] for row in rows], dtype=np.float64).reshape(
        len(rows), len(features))


def load(folder: Path) -> Ranker | None:
    """The ranker stored in `folder`, or None when none was fitted."""
    meta_path = folder / "ranker.json"
    if not meta_path.exists():
        return None
    import lightgbm

    try:
        meta = json.loads(meta_path.read_text())
        levels = {level: Fitted(lightgbm.Booster(model_file=str(folder / f"{level}.txt")), tuple(names))
                  for level, names in meta.pop("features").items()}
    except (OSError, ValueError, KeyError, lightgbm.basic.LightGBMError) as exc:
        raise RankerUnreadable(f"the fitted ranker in {folder} cannot be read ({exc}); refit it with "
                               f"`cra ranker fit` or remove the folder to search with the default weights") from exc
    return Ranker(levels, meta)


def _dataset(groups: Sequence[Group], features: Sequence[str]):
    import lightgbm

    return lightgbm.Dataset(np.concatenate([g.features for g in groups]), np.concatenate([g.labels for g in groups]),
                            group=[len(g.keys) for g in groups], feature_name=list(features), free_raw_data=False)


def train(groups: Sequence[Group], features: Sequence[str], rounds: int) -> Fitted:
    """Fit LambdaRank on `groups` for a fixed number of boosting rounds."""
    import lightgbm

    booster = lightgbm.train(PARAMS, _dataset(groups, features), num_boost_round=max(1, rounds))
    return Fitted(booster, tuple(features))


@dataclass
class Judged:
    """How a fit fared on the newest past commits against a baseline, and the boosting rounds it should keep."""

    rounds: int
    queries: int
    learned_hits: int   # judged queries with every changed candidate in the first 5 (each block at the rounds
                        # the other blocks chose, so no block judges rounds it picked)
    baseline_hits: int  # the same under the baseline's scores
    blocks: list[dict]

    def as_dict(self) -> dict:
        """The judgement as stored in the ranker's provenance."""
        share = (lambda hits: round(hits / self.queries, 4)) if self.queries else (lambda _hits: 0.0)
        return {"queries": self.queries, "default_acc@5": share(self.baseline_hits),
                "learned_acc@5": share(self.learned_hits), "rounds": self.rounds, "blocks": self.blocks}


def judge(groups: Sequence[Group], features: Sequence[str], baseline: Callable[[Group], np.ndarray]) -> Judged:
    """Judge LambdaRank on time-ordered folds: each of the newest FOLDS blocks of groups is scored by a model fitted
    on every group before it, at each of ROUNDS; the rounds kept are those with the most hits over all blocks."""
    size = max(1, int(len(groups) * FOLD_SHARE))
    folds = max(1, min(FOLDS, (len(groups) - 1) // size))
    hits, baseline_hits, blocks = [], [], []
    for start in range(len(groups) - folds * size, len(groups), size):
        valid = groups[start:start + size]
        model = train(groups[:start], features, max(ROUNDS))
        rows = np.concatenate([g.features for g in valid])
        ends = np.cumsum([len(g.keys) for g in valid])[:-1]
        hits.append([hits_at(np.split(model.booster.predict(rows, num_iteration=r), ends), valid) for r in ROUNDS])
        baseline_hits.append(hits_at([baseline(g) for g in valid], valid))
    totals = np.sum(hits, axis=0)
    learned = 0
    for b, block in enumerate(hits):
        others = totals - block if len(hits) > 1 else totals
        chosen = int(np.argmax(others))
        learned += block[chosen]
        blocks.append({"queries": size, "default_acc@5": round(baseline_hits[b] / size, 4),
                       "learned_acc@5": round(block[chosen] / size, 4), "rounds": ROUNDS[chosen]})
    return Judged(ROUNDS[int(np.argmax(totals))], folds * size, int(learned), int(sum(baseline_hits)), blocks)


def hits_at(order_scores: Sequence[np.ndarray], groups: Sequence[Group], k: int = 5) -> int:
    """How many groups have all their changed candidates in the first k under the given scores."""
    hits = 0
    for scores, group in zip(order_scores, groups):
        top = np.argsort(-scores, kind="stable")[:k]
        hits += group.gold > 0 and int(group.labels[top].sum()) == group.gold
    return hits
