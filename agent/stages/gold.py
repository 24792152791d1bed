"""A past commit's gold facts, and what each stage learns from them: the record bootstrapping fills and `Stage.teach` reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

SymbolRef = tuple[str, str]  # (path, name)


@dataclass(frozen=True)
class GoldEdit:
    """A search/replace block that reproduces part of the commit, and the parent's line where its hunk starts."""

    path: str
    search: str
    replace: str
    hunk_line: int


@dataclass
class CommitGold:
    """What a past commit did, in the stages' terms: every stage's training pair is labelled from it.

    `edits` reproduce the commit exactly; when there are none, `edits_skipped` says why none were tried (a change
    search/replace cannot express) or `edits_failed` why the ones tried fall short, as (kind, detail).
    """

    description: str
    files: list[str]  # every file the commit changed
    code_files: list[str]  # the changed C, header and assembly files the parent has
    kind: str  # a task_analysis.Kind
    primary: list[SymbolRef]  # the symbols the commit modified
    supporting: list[SymbolRef]  # the symbols the modified code names
    hunks: dict[str, int]  # how many hunks of the diff each code file has
    edits: list[GoldEdit] = field(default_factory=list)
    edits_skipped: str | None = None
    edits_failed: tuple[str, str] | None = None


@dataclass
class Lesson:
    """One stage's part of a past commit's synthetic run: its training pair, what later stages are handed, and facts.

    `output` is the gold answer (None: the commit gives the stage no pair, and `facts` say why); `handed` is the answer
    the later stages' inputs are built from, `output` unless the stage says otherwise; `rules` is what the stage's
    deterministic rules answer to the same input (stages with rules), stored with the pair to score retrieval alone.
    """

    output: BaseModel | None
    messages: list[dict[str, str]] = field(default_factory=list)
    handed: BaseModel | None = None
    rules: BaseModel | None = None
    meta: dict = field(default_factory=dict)  # stored with the pair
    facts: dict = field(default_factory=dict)  # for the commit's record

    def __post_init__(self) -> None:
        if self.handed is None:
            self.handed = self.output
