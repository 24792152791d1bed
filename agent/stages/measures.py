"""The measures stages score held-out answers with: F1 of sets, F1 per label, agreement of order."""

from __future__ import annotations


def f1(gold: set, predicted: set) -> float:
    """F1 of two sets (1.0 when both are empty)."""
    if not gold and not predicted:
        return 1.0
    hits = len(gold & predicted)
    return 0.0 if not hits else 2 * hits / (len(gold) + len(predicted))


def label_f1(gold: dict, predicted: dict, labels: tuple[str, ...], default: str) -> dict[str, float | None]:
    """F1 of each of `labels` over per-item labels (None where neither side uses it); items the prediction leaves
    out get `default`."""
    scores: dict[str, float | None] = {}
    for label in labels:
        want = {k for k, v in gold.items() if v == label}
        got = {k for k in gold if predicted.get(k, default) == label}
        scores[label] = f1(want, got) if want or got else None
    return scores


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
