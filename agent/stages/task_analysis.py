"""Task analysis: the task text as a structured analysis (kind, terms, named symbols and files, ROM invariance)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from agent.llm.budget import PromptBudget, clip_tokens
from agent.stages.base import (
    Decision,
    Prompt,
    RepoPath,
    Short,
    Stage,
    StageContext,
    StageRecipe,
    system,
)
from agent.stages.gold import CommitGold, Lesson
from agent.stages.measures import f1

Kind = Literal["documentation", "rename", "bug_fix", "feature", "refactor"]
ROM_PRESERVING: frozenset[str] = frozenset({"documentation", "rename", "refactor"})

# The first verb of a pret commit subject says what kind of change it is (spaCy tags a leading "Fix" as a noun).
VERB_KINDS: dict[str, Kind] = {
    **dict.fromkeys(("document", "documented", "documents", "comment", "label", "name", "describe", "annotate", "doc",
                     "identify", "decompile", "decomp", "match"), "documentation"),
    **dict.fromkeys(("rename", "renamed", "renames"), "rename"),
    **dict.fromkeys(("fix", "fixed", "fixes", "correct", "repair", "patch", "bugfix"), "bug_fix"),
    **dict.fromkeys(("add", "added", "adds", "implement", "support", "introduce", "create", "allow", "enable", "new"),
                    "feature"),
}
STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it its of on or so that the this to was were with use using "
    "up out all some more less than then when which".split()
)
ANALYSIS_SHARE = 0.25  # of a later stage's prompt budget, the most a model's analysis may take of it
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATHLIKE = re.compile(r"[\w./-]+\.(?:c|h|s|inc|json|txt|mk)\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]+")


class TaskInput(BaseModel):
    """The task as the user wrote it."""

    task: str


class TaskAnalysis(BaseModel):
    """What the task asks for, in the terms the later stages use."""

    kind: Kind
    key_terms: list[Short] = Field(max_length=8)
    symbols: list[Short] = Field(max_length=8, description="code identifiers the task names")
    files: list[RepoPath] = Field(max_length=5, description="repository files the task names")
    subsystems: list[Short] = Field(max_length=5)
    keep_rom: bool = Field(description="whether the ROM must stay byte-identical")

    def shown(self, budget: PromptBudget) -> str:
        """The analysis as a later stage's prompt shows it: its JSON, cut to a quarter of that prompt's budget."""
        return clip_tokens(budget, json.dumps(self.model_dump()), int(budget.tokens * ANALYSIS_SHARE))


def _identifiers(task: str) -> list[str]:
    """Words shaped like code: snake_case, camelCase, sub_80A1234, CONSTANTS."""
    out = []
    for word in _IDENT.findall(task):
        if ("_" in word.strip("_") or re.search(r"[a-z][A-Z]|[A-Z][a-z]+[A-Z]", word) or re.search(r"[A-Za-z][0-9]", word)
                or (word.isupper() and len(word) >= 4)):
            out.append(word)
    return list(dict.fromkeys(out))


def _key_terms(task: str, skip: set[str]) -> list[str]:
    terms = []
    for word in _WORD.findall(_IDENT.sub(lambda m: " " if m[0] in skip else m[0], task)):
        low = word.lower()
        if low in STOPWORDS or low in VERB_KINDS or word in skip or len(low) < 3:
            continue
        terms.append(low)
    return list(dict.fromkeys(terms))[:8]


class TaskAnalysisStage(Stage[TaskInput, TaskAnalysis]):
    """Task text → structured analysis."""

    name = "task_analysis"
    Input = TaskInput
    Output = TaskAnalysis
    role = "reasoning"
    recipe = StageRecipe(rank=16, max_length=2048)
    has_rules = True

    @staticmethod
    def kind_of(task: str) -> Kind:
        """The kind a task's leading verb states (else a bug word, else refactor)."""
        words = [w.lower() for w in _WORD.findall(task)]
        for word in words[:3]:
            if word in VERB_KINDS:
                return VERB_KINDS[word]
        if {"bug", "crash", "wrong", "incorrect"} & set(words):
            return "bug_fix"
        return "refactor"

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> TaskInput:
        """The task text."""
        return TaskInput(task=ctx.task)

    def rules(self, ctx: StageContext, inp: TaskInput) -> TaskAnalysis:
        """Kind from the leading verb, identifiers the index defines, paths the index has."""
        known = ctx.project.defined(_identifiers(inp.task))
        named = [name for name in _identifiers(inp.task) if name in known]
        files = ctx.project.indexed_files()
        by_name: dict[str, list[str]] = {}
        for path in files:
            by_name.setdefault(path.rsplit("/", 1)[-1], []).append(path)
        named_files = []
        for token in _PATHLIKE.findall(inp.task):
            named_files += [token] if token in files else by_name.get(token.rsplit("/", 1)[-1], [])
        subsystems = [p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for p in named_files]
        subsystems += [p.rsplit("/", 1)[-1].rsplit(".", 1)[0] for name in named for p in known[name]]
        kind = self.kind_of(inp.task)
        return TaskAnalysis(
            kind=kind, key_terms=_key_terms(inp.task, set(_identifiers(inp.task))), symbols=named[:8],
            files=list(dict.fromkeys(named_files))[:5], subsystems=list(dict.fromkeys(subsystems))[:5],
            keep_rom=kind in ROM_PRESERVING,
        )

    def prompt(self, ctx: StageContext, inp: TaskInput) -> Prompt:
        """The task, with the kinds and the ROM rule spelled out."""
        return Prompt([system("task analyst"), {"role": "user", "content": (
            f"Task: {inp.task}\n\nClassify the change (documentation, rename, bug_fix, feature, refactor), list its key "
            "terms, the code identifiers and repository files it names, the subsystems it touches, and whether the "
            "built ROM must stay byte-identical (true for documentation, renames and refactors)."
        )}])

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """The commit's kind, modified symbols and files; the later stages' retrieval is handed the rules' answer, which
        knows only the task text, as at run time."""
        inp = self.build_input(ctx, {})
        rules = self.rules(ctx, inp)
        analysis = TaskAnalysis(
            kind=gold.kind, key_terms=rules.key_terms, symbols=[n for _, n in gold.primary][:8],
            files=gold.files[:5], subsystems=list(dict.fromkeys(Path(p).stem for p in gold.files))[:5],
            keep_rom=gold.kind in ROM_PRESERVING,
        )
        return Lesson(analysis, self.prompt(ctx, inp).messages, handed=rules, rules=rules)

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """The kind and the ROM rule right, and F1 of the named symbols and of the named files."""
        return {"kind": float(gold["kind"] == predicted["kind"]), "keep_rom": float(gold["keep_rom"] == predicted["keep_rom"]),
                "symbols_f1": f1(set(gold["symbols"]), set(predicted["symbols"])),
                "files_f1": f1(set(gold["files"]), set(predicted["files"]))}

    def decisions(self, inp: TaskInput, out: TaskAnalysis) -> list[Decision]:
        """One row per field: the kind, each named symbol and file."""
        rows = [Decision(candidate="kind", decision=out.kind, reason=f"keep_rom={out.keep_rom}")]
        rows += [Decision(candidate=s, decision="named symbol") for s in out.symbols]
        rows += [Decision(candidate=f, decision="named file") for f in out.files]
        return rows
