"""The measures stages score held-out answers with: F1 of sets and of labelled items, agreement of order."""

from __future__ import annotations


def f1(gold: set, predicted: set) -> float:
    """F1 of two sets (1.0 when both are empty)."""
    if not gold and not predicted:
        return 1.0
    hits = len(gold & predicted)
    return 0.0 if not hits else 2 * hits / (len(gold) + len(predicted))


def kept_f1(gold: dict, predicted: dict, first: str, kept: tuple[str, ...]) -> dict[str, float]:
    """Over per-item labels: F1 of the items labelled `first`, and of those labelled any of `kept` (what the later
    stages are handed). The label of what is left out scores nothing by itself: it is most items, and its F1 would
    rank an empty answer above one that finds the change."""
    def having(labels: dict, wanted: tuple[str, ...]) -> set:
        return {item for item, label in labels.items() if label in wanted}
    return {first: f1(having(gold, (first,)), having(predicted, (first,))),
            "kept": f1(having(gold, kept), having(predicted, kept))}


def mean_measure(measures: dict[str, float | None]) -> float:
    """The mean of the measures that apply; 1.0 when none does (nothing to get wrong)."""
    values = [v for v in measures.values() if v is not None]
    return sum(values) / len(values) if values else 1.0


def order_agreement(gold: list[str], predicted: list[str]) -> float:
    """The share of gold pairs (a before b) the prediction keeps in order."""
    common = [p for p in gold if p in predicted]
    pairs = [(a, b) for i, a in enumerate(common) for b in common[i + 1:]]
    if not pairs:
        return 1.0 if common else 0.0
    return sum(predicted.index(a) < predicted.index(b) for a, b in pairs) / len(pairs)
