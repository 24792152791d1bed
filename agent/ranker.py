"""A ranker fitted on one project's history: LightGBM LambdaRank over the signals retrieval computes, for files and
for symbols, stored in the project's cra folder with where it came from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import CraError

LEVELS = ("files", "symbols")
PARAMS = {  # small trees, few of them: thousands of queries with a few hundred candidates each, fitted on CPU
    "objective": "lambdarank", "metric": "ndcg", "eval_at": [5], "learning_rate": 0.05, "num_leaves": 15,
    "min_data_in_leaf": 20, "feature_fraction": 0.9, "lambdarank_truncation_level": 20, "deterministic": True,
    "num_threads": 2, "seed": 7, "verbose": -1,
}
MAX_ROUNDS = 400
PATIENCE = 40  # boosting rounds without a validation gain before stopping


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


def fit(train: Sequence[Group], valid: Sequence[Group], features: Sequence[str]) -> tuple[Fitted, int]:
    """Fit LambdaRank on `train`, stopping when `valid`'s NDCG@5 stops improving; the model and its rounds."""
    import lightgbm

    train_set = _dataset(train, features)
    valid_sets = [_dataset(valid, features)] if valid else []
    callbacks = [lightgbm.early_stopping(PATIENCE, verbose=False)] if valid else []
    booster = lightgbm.train(PARAMS, train_set, num_boost_round=MAX_ROUNDS, valid_sets=valid_sets,
                             callbacks=callbacks)
    rounds = booster.best_iteration or MAX_ROUNDS
    return Fitted(booster, tuple(features)), rounds


def refit(groups: Sequence[Group], features: Sequence[str], rounds: int) -> Fitted:
    """Fit LambdaRank on every group for a fixed number of rounds (those the validation chose)."""
    import lightgbm

    booster = lightgbm.train(PARAMS | {"metric": "none"}, _dataset(groups, features), num_boost_round=max(1, rounds))
    return Fitted(booster, tuple(features))


def acc_at(order_scores: Sequence[np.ndarray], groups: Sequence[Group], k: int = 5) -> float:
    """The share of groups whose changed candidates all rank in the first k under the given scores."""
    hits = 0
    for scores, group in zip(order_scores, groups):
        top = np.argsort(-scores, kind="stable")[:k]
        hits += group.gold > 0 and int(group.labels[top].sum()) == group.gold
    return hits / len(groups) if groups else 0.0
