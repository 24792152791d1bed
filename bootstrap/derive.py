"""One synthetic pipeline run per mined commit: the commit's gold facts from its diff, then each stage's training pair.

Each stage of the pipeline makes its own pair (`Stage.teach`) with its input builder and prompt on the index as it was
at the commit's parent, so training prompts are exactly what the agent sends at run time; the label comes from the
gold facts computed here: what the commit changed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from agent import repo as git_repo
from agent.edits import Edit, EditError, apply_edits
from agent.project import Project
from agent.stages import PIPELINE
from agent.stages.base import StageContext
from agent.stages.code import MAX_EDITS, EditBlock
from agent.stages.gold import CommitGold, GoldEdit, Lesson, SymbolRef
from agent.stages.task_analysis import TaskAnalysisStage

CODE_SUFFIXES = (".c", ".h", ".s", ".inc")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_IDENT = re.compile(r"\b[A-Za-z_][A-Za-z0-9_]*\b")
_COMMENT = re.compile(r"^\s*(//|/\*|\*)")
MAX_CONTEXT = 40  # lines a block may grow by until its search matches one place (duplicated code needs many)
MAX_BLOCK = 3500  # leaves room for the context a block grows by, under the code stage's 4,000 characters


@dataclass(frozen=True)
class Hunk:
    """One hunk of a `git diff -U3`: where it starts on each side and its lines with their markers."""

    path: str
    old_start: int
    new_start: int
    lines: tuple[str, ...]

    @property
    def old_text(self) -> list[str]:
        """Context and removed lines."""
        return [line[1:] for line in self.lines if line[:1] in (" ", "-")]

    @property
    def new_text(self) -> list[str]:
        """Context and added lines."""
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]

    @property
    def end_newlines(self) -> tuple[str, str]:
        """What the search and replace texts end with: a newline on the side that has one where the other ends the
        file without ("\\ No newline at end of file" on one side only)."""
        missing = set()
        for before, line in zip(self.lines, self.lines[1:]):
            if line.startswith("\\"):
                missing |= {"-", "+"} if before[:1] == " " else {before[:1]}
        return "\n" if missing == {"+"} else "", "\n" if missing == {"-"} else ""

    @property
    def old_changed(self) -> tuple[int, int]:
        """First and last old-side line the hunk removes or inserts before (1-based)."""
        line, first, last = self.old_start, None, None
        for text in self.lines:
            if text[:1] == "-":
                first = line if first is None else first
                last = line
            if text[:1] == "+" and first is None:
                first = last = line
            if text[:1] in (" ", "-"):
                line += 1
        return first or self.old_start, last or self.old_start


@dataclass
class StagePair:
    """One stage's training pair: the messages the agent would send, and the answer the commit implies."""

    stage: str
    messages: list[dict[str, str]]
    output: BaseModel
    meta: dict = field(default_factory=dict)


def parse_hunks(patch: str) -> list[Hunk]:
    """Every hunk of a unified diff with its file path (the old path, or the new one for added files)."""
    hunks: list[Hunk] = []
    path, current, start = None, None, (0, 0)
    for line in patch.split("\n"):
        if line.startswith("diff --git"):
            if current is not None and path:
                hunks.append(Hunk(path, *start, tuple(current)))
            path, current = None, None
        elif line.startswith("--- "):
            path = line[6:] if line.startswith("--- a/") else None
        elif line.startswith("+++ ") and path is None:
            path = line[6:] if line.startswith("+++ b/") else None
        elif line.startswith("@@ "):
            if current is not None and path:
                hunks.append(Hunk(path, *start, tuple(current)))
            m = _HUNK.match(line)
            start, current = (int(m[1]), int(m[3])), []
        elif current is not None and line[:1] in (" ", "-", "+"):
            current.append(line)
        elif current is not None and line.startswith("\\"):
            current.append(line)  # "\ No newline at end of file", for the line before it
    if current is not None and path:
        hunks.append(Hunk(path, *start, tuple(current)))
    return hunks


def commit_patch(repo: Path, parent: str, sha: str, paths: list[str]) -> str:
    """The commit's diff of `paths` with three lines of context and no rename detection."""
    return git_repo.git(repo, "diff", "-U3", "--no-renames", "--no-color", "--no-ext-diff", parent, sha, "--", *paths
                        ).decode("utf-8", "replace")


def kind_of(description: str, hunks: list[Hunk]) -> str:
    """The task kind: the subject's verb, else what the diff looks like (only comments: documentation)."""
    stated = TaskAnalysisStage.kind_of(description)
    if stated != "refactor":
        return stated
    changed = [line[1:] for h in hunks for line in h.lines if line[:1] in "+-"]
    if changed and all(_COMMENT.match(line) or not line.strip() for line in changed):
        return "documentation"
    return stated


def label_commit(project: Project, files: list[str], hunks: list[Hunk]) -> tuple[list[SymbolRef], list[SymbolRef]]:
    """The primary symbols, modified (their spans the hunks touch), and the supporting ones, that they call or name."""
    primary: list[SymbolRef] = []
    symbols = project.symbols_in_files(files)
    by_file: dict[str, list] = {}
    for sym in symbols:
        by_file.setdefault(sym.path, []).append(sym)
    named: set[str] = set()
    for hunk in hunks:
        first, last = hunk.old_changed
        for sym in by_file.get(hunk.path, []):
            if sym.start_line <= last and sym.end_line >= first and (sym.path, sym.name) not in primary:
                primary.append((sym.path, sym.name))
        named |= {m for line in hunk.lines if line[:1] in "+-" for m in _IDENT.findall(line[1:])}
    modified = set(primary)
    return primary, [(s.path, s.name) for s in symbols if s.name in named and (s.path, s.name) not in modified]


def merge_hunks(root: Path, hunks: list[Hunk], limit: int = MAX_EDITS) -> list[Hunk]:
    """At most `limit` hunks where it can be done: neighbours in one file joined (closest first), with the lines
    between them as context, while the joined text still fits an edit block."""
    hunks = list(hunks)
    lines = {p: (root / p).read_text(encoding="utf-8", errors="surrogateescape").split("\n") for p in {h.path for h in hunks}}
    while len(hunks) > limit:
        best: tuple[int, int, Hunk] | None = None
        for i, (a, b) in enumerate(zip(hunks, hunks[1:])):
            if a.path != b.path:
                continue
            gap = lines[a.path][a.old_start - 1 + len(a.old_text):b.old_start - 1]
            joined = Hunk(a.path, a.old_start, a.new_start, a.lines + tuple(" " + text for text in gap) + b.lines)
            if max(len("\n".join(joined.old_text)), len("\n".join(joined.new_text))) <= MAX_BLOCK and (
                    best is None or len(gap) < best[0]):
                best = (len(gap), i, joined)
        if best is None:
            break
        _, i, joined = best
        hunks[i:i + 2] = [joined]
    return hunks


def unique_edits(root: Path, hunks: list[Hunk]) -> list[EditBlock]:
    """Search/replace blocks reproducing the hunks, each grown with context until it matches one place only."""
    blocks = []
    texts = {p: (root / p).read_text(encoding="utf-8", errors="surrogateescape") for p in {h.path for h in hunks}}
    for hunk in hunks:
        text = texts[hunk.path]
        lines = text.split("\n")
        old, new = hunk.old_text, hunk.new_text
        old_end, new_end = hunk.end_newlines
        before = after = 0
        start = hunk.old_start - 1
        while text.count("\n".join(old) + old_end) != 1 and before + after < MAX_CONTEXT:
            if start - before - 1 >= 0:
                before += 1
                old.insert(0, lines[start - before])
                new.insert(0, lines[start - before])
            elif start + len(hunk.old_text) + after < len(lines):
                old.append(lines[start + len(hunk.old_text) + after])
                new.append(lines[start + len(hunk.old_text) + after])
                after += 1
            else:
                break
        if max(len("\n".join(old)), len("\n".join(new))) > MAX_BLOCK + 500:
            return []
        blocks.append(EditBlock(path=hunk.path, search="\n".join(old) + old_end, replace="\n".join(new) + new_end))
    return blocks


def reapply_problem(worktree: Path, repo: Path, sha: str, blocks: list[EditBlock], files: list[str]) -> tuple[str, str] | None:
    """Why the blocks, applied to the parent's files, do not give exactly the commit's files, as (kind, detail); None if they do."""
    originals = {p: (worktree / p).read_bytes() for p in files if (worktree / p).exists()}
    try:
        apply_edits(worktree, [Edit(path=b.path, search=b.search, replace=b.replace) for b in blocks])
        differ = [p for p in files if (worktree / p).read_bytes() != git_repo.git(repo, "show", f"{sha}:{p}")]
        return ("result differs", f"the edits apply but {', '.join(differ)} differs from the commit's") if differ else None
    except EditError as exc:
        return "edits do not apply", str(exc)[:300]
    finally:
        for path, data in originals.items():
            (worktree / path).write_bytes(data)


def commit_gold(worktree: Path, project: Project, repo: Path, *, sha: str, description: str, files: list[str],
                code_files: list[str], hunks: list[Hunk]) -> CommitGold:
    """The commit's gold facts, with the worktree and its index at its parent: its kind, its symbols' labels, and the
    search/replace edits that reproduce it exactly (or why there are none)."""
    primary, supporting = label_commit(project, code_files, hunks)
    gold = CommitGold(description=description, files=files, code_files=code_files, kind=kind_of(description, hunks),
                      primary=primary, supporting=supporting,
                      hunks={p: sum(h.path == p for h in hunks) for p in code_files})
    listed = git_repo.git(repo, "ls-tree", "--name-only", "-z", sha, "--", *code_files).decode("utf-8", "surrogateescape")
    if set(code_files) - set(listed.split("\0")):
        gold.edits_skipped = "the commit deletes or renames a file; search/replace cannot express it"
    elif (longest := max(len(line) for h in hunks for line in ("\n".join(h.old_text), "\n".join(h.new_text)))) > MAX_BLOCK:
        gold.edits_skipped = f"a hunk of {longest} characters is longer than an edit block may be ({MAX_BLOCK})"
    else:
        edited = merge_hunks(worktree, hunks)
        blocks = unique_edits(worktree, edited)
        if not blocks:
            gold.edits_failed = ("block too long", f"an edit block outgrows {MAX_BLOCK + 500} characters with the context "
                                 "that makes its search unique")
        elif len(blocks) > MAX_EDITS:
            gold.edits_failed = ("too many blocks", f"{len(blocks)} edit blocks (neighbours too far apart to join); "
                                                   f"a code answer holds at most {MAX_EDITS}")
        elif problem := reapply_problem(worktree, repo, sha, blocks, code_files):
            gold.edits_failed = problem
        else:
            gold.edits = [GoldEdit(b.path, b.search, b.replace, hunk.old_start)
                          for b, hunk in zip(blocks, edited, strict=True)]
    return gold


def derive_pairs(worktree: Path, home: str | Path, *, sha: str, parent: str, description: str,
                 files: list[str], repo: Path) -> tuple[list[StagePair], dict]:
    """A pair from each stage of the pipeline that the commit can teach, with the worktree and its index at `parent`;
    and facts about them."""
    code_files = [p for p in files if p.endswith(CODE_SUFFIXES) and (worktree / p).is_file()]
    hunks = [h for h in parse_hunks(commit_patch(repo, parent, sha, code_files)) if h.path in code_files] if code_files else []
    facts = {"files": len(files), "code_files": len(code_files), "hunks": len(hunks), "code_exact": False}
    if not hunks:
        return [], {**facts, "skipped": "no existing code file changed"}
    pairs: list[StagePair] = []
    with Project.open(worktree, home) as project:  # its index connection closes before the walk writes the index
        ctx = StageContext(task=description, project=project, llm=None, worktree=worktree)
        gold = commit_gold(worktree, project, repo, sha=sha, description=description, files=files,
                           code_files=code_files, hunks=hunks)
        facts["kind"] = gold.kind
        earlier: dict[str, Lesson] = {}
        for stage in PIPELINE:
            lesson = earlier[stage.name] = stage.teach(ctx, gold, earlier)
            facts.update(lesson.facts)
            if lesson.output is not None:
                rules = {"rules": lesson.rules.model_dump(mode="json")} if lesson.rules is not None else {}
                pairs.append(StagePair(stage.name, lesson.messages, lesson.output, {**lesson.meta, **rules}))
    return pairs, facts
