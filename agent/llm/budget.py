"""Prompt budgets in the served model's tokens: the context window less the answer, filled instructions first.

A stage prompt is instructions (the task, the analysis, what to answer) and context (candidates, code excerpts).
The instructions are never cut; the context is taken in order while it fits, and what was left out is noted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.llm.adapters import locate_base

CHARS_PER_TOKEN = 3  # an estimate on the safe side for C and English when no tokenizer is at hand
DEFAULT_CONTEXT = 8192  # tokens, when neither [serve] max_model_len nor the base's config says
TEMPLATE_TOKENS = 64  # the chat template's own tokens around the messages
CUT = "… (cut)"
UNSERVED_CHARS = 12_000  # the prompts bootstrapping derives, for no particular model


@dataclass(frozen=True)
class PromptBudget:
    """How many tokens a prompt may take, and how to count them."""

    tokens: int
    count: Callable[[str], int] = field(compare=False)
    counted_by: str  # "the tokenizer of BASE" or "an estimate of 3 characters a token"

    def describe(self) -> str:
        """The budget in words, for the notes of a stage whose context was cut."""
        return f"{self.tokens:,} tokens, counted by {self.counted_by}"


def estimate(text: str) -> int:
    """Tokens of `text` by a character count, for when the model's tokenizer is not local."""
    return -(-len(text) // CHARS_PER_TOKEN)


def char_budget(chars: int = UNSERVED_CHARS) -> PromptBudget:
    """A budget of `chars` characters, estimated in tokens: for prompts no served model will read (bootstrapping)."""
    return PromptBudget(estimate("x" * chars), estimate, f"an estimate of {CHARS_PER_TOKEN} characters a token")


def budget_for(base: str, *, max_model_len: int | None, answer_tokens: int) -> PromptBudget:
    """The prompt budget of a served base: its context (`max_model_len`, else its config) less the answer.

    Tokens are counted with the base's own tokenizer when its files are local, else estimated.
    """
    folder = locate_base(base)
    tokens = max(0, (max_model_len or _context_of(folder) or DEFAULT_CONTEXT) - answer_tokens - TEMPLATE_TOKENS)
    tokenizer = _tokenizer(folder)
    if tokenizer is None:
        return PromptBudget(tokens, estimate, f"an estimate of {CHARS_PER_TOKEN} characters a token (no local "
                                              f"tokenizer for {base})")
    return PromptBudget(tokens, lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids),
                        f"the tokenizer of {base}")


def _context_of(folder: Path | None) -> int | None:
    """The context length a base's config.json gives, if any."""
    if folder is None or not (folder / "config.json").is_file():
        return None
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config)
    value = config.get("max_position_embeddings")
    return int(value) if value else None


def _tokenizer(folder: Path | None):
    """The base's fast tokenizer (tokenizer.json), or None when it has none."""
    if folder is None or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def clip_tokens(budget: PromptBudget, text: str, tokens: int) -> str:
    """`text` cut to at most `tokens` of the budget's tokens, the cut marked."""
    if budget.count(text) <= tokens:
        return text
    low, high = 0, len(text)
    while low < high:  # the longest head that fits, marker included
        mid = (low + high + 1) // 2
        if budget.count(text[:mid] + CUT) <= tokens:
            low = mid
        else:
            high = mid - 1
    return text[:low] + CUT


def fit(budget: PromptBudget, instructions: list[str], context: list[str], *, what: str,
        joiner: str = "\n") -> tuple[list[str], list[str]]:
    """The context items that fit beside the instructions, in order; and notes on what was cut.

    The item that first overflows keeps the lines that fit (a long code excerpt is cut, not dropped), the rest go.
    """
    room = budget.tokens - sum(budget.count(part) for part in instructions)
    kept: list[str] = []
    for item in context:
        need = budget.count(item + joiner)
        if need <= room:
            kept.append(item)
            room -= need
            continue
        lines = item.split("\n")
        low, high = 0, len(lines)
        while low < high:  # the most lines that fit, marker included
            mid = (low + high + 1) // 2
            if budget.count("\n".join(lines[:mid] + [CUT]) + joiner) <= room:
                low = mid
            else:
                high = mid - 1
        if low > 1:
            kept.append("\n".join(lines[:low] + [CUT]))
        break
    notes = []
    if len(kept) < len(context) or (kept and kept[-1].endswith(CUT)):
        whole = len(kept) - (1 if kept and kept[-1].endswith(CUT) else 0)
        notes.append(f"prompt budget ({budget.describe()}): {whole} of {len(context)} {what} shown whole"
                     + (", one cut short" if whole < len(kept) else "") + "; the instructions are whole")
    if room < 0 and not kept:
        notes.append(f"the instructions alone take more than the prompt budget ({budget.describe()})")
    return kept, notes
