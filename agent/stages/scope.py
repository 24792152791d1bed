"""Scope: candidate files from hybrid retrieval plus graph expansion, each classified relevant, supporting or irrelevant."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from agent.errors import UnknownSymbol
from agent.stages.base import (
    Decision,
    Prompt,
    Reason,
    RepoPath,
    Stage,
    StageContext,
    StageRecipe,
    budgeted,
    keep_listed,
)
from agent.stages.gold import CommitGold, Lesson
from agent.stages.measures import kept_f1
from agent.stages.task_analysis import TaskAnalysis

Label = Literal["relevant", "supporting", "irrelevant"]
CANDIDATES = 20
RELEVANT_SHARE = 0.6   # of the best score, among the top three
SUPPORTING_SHARE = 0.3
NOTE_CHARS = 200  # of a candidate's history note in the prompt


class Candidate(BaseModel):
    """A file the index proposes, with its score, why, and what it defines."""

    path: str
    score: float
    why: str
    symbols: list[str]
    origin: str  # search | named | graph | header
    history: str = ""  # the history note of its best-matching symbol
    summary: str = ""  # the model-written summary (`cra enrich`) of its best-matching function


class ScopeInput(BaseModel):
    """The task, its analysis and the candidate files."""

    task: str
    analysis: TaskAnalysis
    candidates: list[Candidate]


class FileVerdict(BaseModel):
    """One file's label and the reason for it."""

    path: RepoPath
    label: Label
    reason: Reason


class ScopeOutput(BaseModel):
    """The files the change needs, and the ones it does not."""

    files: list[FileVerdict] = Field(max_length=CANDIDATES + 5)


def _partner(path: str, known: set[str]) -> str | None:
    stem = path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if path.endswith(".c"):
        options = [f"include/{stem}.h", path[:-2] + ".h"]
    elif path.endswith(".h"):
        options = [f"src/{stem}.c", path[:-2] + ".c"]
    else:
        return None
    return next((p for p in options if p in known and p != path), None)


def _why(why: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(why.items(), key=lambda kv: -kv[1])[:3] if v > 0)


class ScopeStage(Stage[ScopeInput, ScopeOutput]):
    """Which files the change needs."""

    name = "scope"
    Input = ScopeInput
    Output = ScopeOutput
    role = "reasoning"
    recipe = StageRecipe(rank=16)
    has_rules = True

    def measures(self, gold: dict, predicted: dict, prompt: str = "", validated: bool | None = None
                 ) -> dict[str, float | None]:
        """F1 of the relevant files, and of the files kept (relevant or supporting)."""
        return kept_f1({v["path"]: v["label"] for v in gold["files"]}, {v["path"]: v["label"] for v in predicted["files"]},
                       "relevant", ("relevant", "supporting"))

    def teach(self, ctx: StageContext, gold: CommitGold, earlier: dict[str, Lesson]) -> Lesson:
        """Each candidate labelled from the commit: the files it changed relevant, files defining symbols the change
        names supporting; the later stages are handed the code files it changed, all relevant."""
        inp = self.build_input(ctx, {"task_analysis": earlier["task_analysis"].handed})
        support = {p for p, _ in gold.supporting} - set(gold.files)
        verdicts = []
        for cand in inp.candidates:
            if cand.path in gold.files:
                label, reason = "relevant", "the commit changed it"
            elif cand.path in support:
                label, reason = "supporting", "defines symbols the change uses"
            else:
                label, reason = "irrelevant", "the commit did not need it"
            verdicts.append(FileVerdict(path=cand.path, label=label, reason=reason))
        changed = ScopeOutput(files=[FileVerdict(path=p, label="relevant", reason="the commit changed it")
                                     for p in gold.code_files])
        found = {c.path for c in inp.candidates}
        return Lesson(ScopeOutput(files=verdicts), self.prompt(ctx, inp).messages, handed=changed,
                      rules=self.rules(ctx, inp), meta={"gold_in_candidates": sum(p in found for p in gold.files), "gold": len(gold.files)})

    def build_input(self, ctx: StageContext, done: dict[str, BaseModel]) -> ScopeInput:
        """Search hits, the files defining named symbols and their callers, and header/source partners."""
        analysis = done["task_analysis"]
        query = " ".join([ctx.task, *analysis.symbols])
        hits = ctx.project.search(query, k=CANDIDATES, langs=["c", "h"])
        found: dict[str, tuple[float, str, str]] = {h.path: (h.score, _why(h.why), "search") for h in hits.files}
        top = max((score for score, _, _ in found.values()), default=1.0) or 1.0
        known = ctx.project.indexed_files()
        for path in analysis.files:
            if path in known:
                found[path] = (top, "named in the task", "named")
        for name in analysis.symbols:
            try:
                infos = ctx.project.lookup_symbol(name)
            except UnknownSymbol:
                continue
            for info in infos:
                path = info.symbol.path
                found[path] = (max(found.get(path, (0,))[0], top), f"defines {name}", "named")
                for caller in info.callers[:5]:
                    site = caller["site_path"]
                    if site not in found:
                        found[site] = (0.25 * top, f"calls {name}", "graph")
        for path, (score, _, _) in list(found.items()):
            partner = _partner(path, known)
            if partner and partner not in found:
                found[partner] = (0.5 * score, f"header/source partner of {path}", "header")
        ranked = sorted(found.items(), key=lambda kv: -kv[1][0])[: CANDIDATES + 5]
        defs: dict[str, list[str]] = {}
        for sym in ctx.project.symbols_in_files([p for p, _ in ranked], kinds=("function", "global")):
            defs.setdefault(sym.path, []).append(sym.name)
        notes: dict[str, str] = {}
        summaries: dict[str, str] = {}
        for hit in hits.symbols:  # best first: each file keeps the note and summary of its best symbol with one
            if hit.history and hit.path not in notes:
                notes[hit.path] = f"{hit.name}: {hit.history}"[:NOTE_CHARS]
            if hit.summary and hit.path not in summaries:
                summaries[hit.path] = f"{hit.name}: {hit.summary}"
        return ScopeInput(task=ctx.task, analysis=analysis, candidates=[
            Candidate(path=p, score=round(s / top, 3), why=w, symbols=defs.get(p, [])[:6], origin=o,
                      history=notes.get(p, ""), summary=summaries.get(p, ""))
            for p, (s, w, o) in ranked
        ])

    def rules(self, ctx: StageContext, inp: ScopeInput) -> ScopeOutput:
        """Named files and definitions of named symbols, then the clear leaders, are relevant; their partners support."""
        verdicts: dict[str, FileVerdict] = {}
        named = [c for c in inp.candidates if c.origin == "named"]
        for cand in named or [c for c in inp.candidates[:3] if c.score >= RELEVANT_SHARE]:
            reason = cand.why if named else f"top search hit ({cand.why})"
            verdicts[cand.path] = FileVerdict(path=cand.path, label="relevant", reason=reason[:200])
        for cand in inp.candidates:
            if cand.path in verdicts:
                continue
            if cand.origin == "header" and any(cand.why.endswith(p) for p in verdicts):
                label, reason = "supporting", cand.why
            elif cand.score >= SUPPORTING_SHARE:
                label, reason = "supporting", f"related search hit ({cand.why})"
            else:
                label, reason = "irrelevant", f"weak match ({cand.score:.2f} of the best)"
            verdicts[cand.path] = FileVerdict(path=cand.path, label=label, reason=reason[:200])
        if not any(v.label == "relevant" for v in verdicts.values()) and inp.candidates:
            first = inp.candidates[0].path
            verdicts[first] = FileVerdict(path=first, label="relevant", reason="best search hit")
        return ScopeOutput(files=list(verdicts.values()))

    def prompt(self, ctx: StageContext, inp: ScopeInput) -> Prompt:
        """The task, its analysis and each candidate with its score and definitions, best first, as many as fit."""
        lines = [f"- {c.path} (score {c.score:.2f}; {c.why}; defines {', '.join(c.symbols) or '-'})"
                 + (f"; summary (model-written): {c.summary}" if c.summary else "")
                 + (f"; history: {c.history}" if c.history else "") for c in inp.candidates]
        return budgeted(ctx, self.name, "scope selector",
                        f"Task: {inp.task}\nAnalysis: {inp.analysis.shown(ctx.budget(self.name))}\n\nCandidate files:\n",
                        lines, "\n\nLabel every candidate relevant (must change), supporting (needed to understand the "
                               "change) or irrelevant, with a short reason. Use only the paths listed.",
                        what="candidate files")

    def check(self, ctx: StageContext, inp: ScopeInput, out: ScopeOutput) -> tuple[ScopeOutput, list[str]]:
        """Keep verdicts on listed candidates only; candidates the model skipped are irrelevant."""
        files, notes = keep_listed(out.files, lambda v: v.path, [c.path for c in inp.candidates], lambda path: FileVerdict(
            path=path, label="irrelevant", reason="not labelled by the model"), "file")
        return ScopeOutput(files=files), notes

    def decisions(self, inp: ScopeInput, out: ScopeOutput) -> list[Decision]:
        """One row per candidate file."""
        score = {c.path: c.score for c in inp.candidates}
        return [Decision(candidate=v.path, decision=v.label, score=score.get(v.path), reason=v.reason) for v in out.files]


def scoped(out: ScopeOutput, *labels: Label) -> list[str]:
    """The paths with one of `labels`."""
    return [v.path for v in out.files if v.label in labels]


