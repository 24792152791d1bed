"""The validation benchmark: past ROM-preserving commits replayed through cra's validation, with two broken twins.

For each of the newest N commits that change only `.c`/`.h` files and whose subject says documentation, rename or
refactor, three validations at the commit's parent, each expecting a verdict:
- the commit's own change: the ROM builds and is byte-identical ("ok");
- the change plus one constant altered in a changed function: it builds and the compare fails ("rom changed");
- the change plus a syntax break (a missing `;`, a stray `{`, a misspelt keyword): the parse check stops it.
The first validation at a parent builds its tree; the two after it reuse the tree, as a run's retries would.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent import repo as git_repo
from agent.builds import BuildEnvironment, base_tree
from agent.errors import InvalidInput
from agent.index.parse import parse_file
from agent.index.symbols import FUNCTION, ParsedFile
from agent.scratch import scratch_folder
from agent.stages.task_analysis import ROM_PRESERVING, TaskAnalysisStage
from agent.validation import ValidationResult, run_check, validate

SCRATCH_PREFIX = "cra-eval-validation-"
SOURCE_SUFFIXES = (".c", ".h")
HEADER = "include/global.h"  # pret's header every C file includes: the worst case for an incremental build
OK, ROM_CHANGED, PARSE_FAILED, BASE_BROKEN = "ok", "rom changed", "parse failed", "base does not build"
_LITERAL = re.compile(r"(?<![\w.])([1-9]\d{0,3})(?![\w.])")
_STATEMENT = re.compile(r"^(\s+)(?!(?:for|if|while|return|case|default|else)\b)[A-Za-z_][^;{}]*;\s*$")
_CONSTANT_CONDITION = re.compile(r"\s*(?:while|if)\s*\(\s*\d+\s*\)")  # `while (1)` is `while (2)`: no change
_FUNCTION_MACRO = re.compile(r"#[ \t]*define[ \t]+(\w+)\(([^)\n]*)\)((?:[^\n\\]|\\[\s\S])*)")
_CALL = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
_MACRO_CALL = re.compile(r"\b([A-Za-z_]\w*(?:\s*##\s*\w+)*)\s*\(")  # in a macro's body, names may be pasted
_COMMENT = re.compile(r"//.*|/\*.*?\*/|\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'")
Progress = Callable[[str], None]
Pasted = dict[str, set[int]]  # macro name -> positions of the arguments it pastes into a token


@dataclass(frozen=True)
class Candidate:
    """A past commit to replay: its parent, subject and the source files it changed."""

    sha: str
    parent: str
    subject: str
    files: list[str]


@dataclass
class Case:
    """One validation of the benchmark: what was validated, the verdict expected and given, and its timings."""

    commit: str
    subject: str
    case: str  # "commit", "mutation", "syntax" or "header"
    files: int  # how many files the validation changed
    expected: str
    verdict: str
    right: bool | None  # None: unverifiable with this toolchain (the base does not build, or history's own tree
    # does not rebuild its parent's ROM)
    base_tree: str | None
    seconds: float
    timings: dict[str, float]
    detail: str = ""
    log: str = ""


@dataclass
class Report:
    """Every case, and the summary `cra eval validation` prints."""

    repo: str
    machine: dict
    jobs: int
    cases: list[Case] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """Verdict accuracy per case, and median timings for first validations at a commit and for the rest."""
        def med(values: list[float]) -> float | None:
            return round(statistics.median(values), 2) if values else None

        def split(cases: list[Case]) -> dict:
            return {"n": len(cases), "median_s": med([c.seconds for c in cases]),
                    **{f"median_{k}_s": med([c.timings[k] for c in cases if k in c.timings])
                       for k in ("parse", "base_build", "prepare", "build", "compare")}}

        judged = [c for c in self.cases if c.right is not None]
        by_case: dict[str, dict] = {}
        for name in ("commit", "mutation", "syntax", "header"):
            cases = [c for c in judged if c.case == name]
            if cases:
                by_case[name] = {"right": sum(c.right for c in cases), "of": len(cases)}
        built = [c for c in self.cases if c.base_tree in ("built", "fresh")]
        reused = [c for c in self.cases if c.base_tree == "cached" and c.case == "mutation"]
        return {
            "verdicts_right": sum(c.right for c in judged), "validations": len(judged),
            "accuracy": round(sum(c.right for c in judged) / len(judged), 4) if judged else None,
            "unverifiable": [f"{c.commit[:10]} {c.case}" for c in self.cases if c.right is None],
            "by_case": by_case, "first_at_a_commit": split(built), "one_file_after_the_first": split(
                [c for c in reused if c.files == 1]),
            "reused_tree": split(reused), "syntax": split([c for c in self.cases if c.case == "syntax"]),
            "header": split([c for c in self.cases if c.case == "header"]),
        }

    def as_dict(self) -> dict:
        """The report as JSON-ready data."""
        return {"repo": self.repo, "machine": self.machine, "jobs": self.jobs, "summary": self.summary(),
                "cases": [asdict(c) for c in self.cases], "skipped": self.skipped}


def candidates(repo: Path, last: int) -> list[Candidate]:
    """The newest `last` non-merge commits that change only C sources and whose subject keeps the ROM."""
    found: list[Candidate] = []
    log = git_repo.git(repo, "-c", "core.quotePath=false", "log", "--no-merges", "--first-parent",
                       "--format=%x1e%H %P%x1f%s", "--name-status", "--no-renames").decode("utf-8", "replace")
    for record in log.split("\x1e")[1:]:
        header, *lines = record.strip("\n").split("\n")
        ids, _, subject = header.partition("\x1f")
        shas = ids.split()
        changes = [line.split("\t", 1) for line in lines if "\t" in line]
        if len(shas) != 2 or TaskAnalysisStage.kind_of(subject) not in ROM_PRESERVING or not changes:
            continue
        if any(status != "M" or not path.endswith(SOURCE_SUFFIXES) for status, path in changes):
            continue
        found.append(Candidate(shas[0], shas[1], subject, [path for _, path in changes]))
        if len(found) == last:
            break
    return found


def mutate_constant(path: str, text: str, pasted: Pasted | None = None) -> tuple[str, str] | None:
    """The text with one integer literal of a function body raised by one, outside any #if and never an argument
    a macro pastes into a name (`pasted`); and where."""
    for line_no, line in _function_lines(path, text):
        if "=" not in line and "return" not in line and "(" not in line or _CONSTANT_CONDITION.match(line):
            continue
        code = _COMMENT.sub(lambda m: " " * len(m.group(0)), line)
        for m in _LITERAL.finditer(code):
            if _pasted_argument(code, m.start(), pasted or {}):
                continue
            new = line[:m.start()] + str(int(m.group(1)) + 1) + line[m.end():]
            return _replace_line(text, line_no, new), f"{path}:{line_no}: {m.group(1)} -> {int(m.group(1)) + 1}"
    return None


def pasted_parameters(sources: Iterable[str]) -> Pasted:
    """For each function-like macro of `sources`, the positions of the parameters its expansion pastes into a
    token with `##`, directly or through the macros it calls (`DmaCopy16(3, ...)` ends as `REG_ADDR_DMA3`)."""
    macros: dict[str, tuple[list[str], str]] = {}
    for text in sources:
        for m in _FUNCTION_MACRO.finditer(text):
            params = [p.strip() for p in m.group(2).split(",")]
            macros[m.group(1)] = (params, m.group(3).replace("\\\n", " "))
    pasted: Pasted = {name: {i for i, p in enumerate(params) if p and re.search(
        rf"##\s*{re.escape(p)}\b|\b{re.escape(p)}\s*##", body)} for name, (params, body) in macros.items()}
    changed = True
    while changed:  # a parameter handed on where the called macro pastes it is pasted too
        changed = False
        for name, (params, body) in macros.items():
            for call in _MACRO_CALL.finditer(body):
                inner = _pasted_by(call.group(1), pasted)
                if not inner:
                    continue
                for i, (begin, end) in enumerate(_argument_spans(body, call.end())):
                    arg = body[begin:end]
                    if i in inner and arg in params and params.index(arg) not in pasted[name]:
                        pasted[name].add(params.index(arg))
                        changed = True
    return {name: found for name, found in pasted.items() if found}


def _pasted_by(name: str, pasted: Pasted) -> set[int]:
    """The pasted positions of the macro `name` calls; for a name itself pasted (`DmaCopy##bit`), of every macro
    it could be."""
    if "##" not in name:
        return pasted.get(name, set())
    prefix = name.split("#", 1)[0].rstrip()
    return set().union(*(found for macro, found in pasted.items() if macro.startswith(prefix)))


def _argument_spans(text: str, start: int) -> list[tuple[int, int]]:
    """The (start, end) of each comma-separated argument, blanks trimmed, of the call whose `(` ends at `start`."""
    spans, depth, begin = [], 0, start
    for i in range(start, len(text) + 1):
        char = text[i] if i < len(text) else ")"
        if char in "([{":
            depth += 1
        elif char in ")]}" and depth:
            depth -= 1
        elif char in ",)" and depth == 0:
            arg = text[begin:i]
            spans.append((begin + len(arg) - len(arg.lstrip()), i - len(arg) + len(arg.rstrip())))
            if char == ")":
                return spans
            begin = i + 1
    return spans


def _pasted_argument(code: str, pos: int, pasted: Pasted) -> bool:
    """Whether the literal at `pos` is, whole, an argument that its macro call pastes into a name."""
    for call in _CALL.finditer(code[:pos]):
        for i, (begin, end) in enumerate(_argument_spans(code, call.end())):
            if begin == pos and i in pasted.get(call.group(1), ()) and _LITERAL.fullmatch(code[begin:end]):
                return True
    return False


def break_syntax(path: str, text: str, variant: int) -> tuple[str, str] | None:
    """The text with a statement broken one of three ways (by `variant`): no `;`, a stray `{`, `switch` misspelt."""
    statements = [(n, line) for n, line in _function_lines(path, text) if _STATEMENT.match(line)]
    keyword = next(((n, line) for n, line in _function_lines(path, text) if re.match(r"\s+(switch|if) \(", line)), None)
    if variant % 3 == 2 and keyword is not None:
        n, line = keyword
        new = re.sub(r"\b(switch|if) \(", lambda m: ("swich" if m.group(1) == "switch" else "iff") + " (", line, count=1)
        return _replace_line(text, n, new), f"{path}:{n}: misspelt keyword"
    if not statements:
        return None
    n, line = statements[len(statements) // 2]
    if variant % 3 == 1:
        return _replace_line(text, n, line + "\n" + line[:len(line) - len(line.lstrip())] + "{"), f"{path}:{n}: stray {{"
    return _replace_line(text, n, line.rstrip().removesuffix(";")), f"{path}:{n}: missing ;"


def _function_lines(path: str, text: str) -> list[tuple[int, str]]:
    """(line number, line) inside function bodies, outside every preprocessor conditional."""
    parsed = parse_file(path, text.encode())
    if not isinstance(parsed, ParsedFile):
        return []
    lines = text.split("\n")
    depth, outside = 0, set()
    for n, line in enumerate(lines, 1):
        stripped = line.lstrip()
        if re.match(r"#\s*if", stripped):
            depth += 1
        elif re.match(r"#\s*endif", stripped):
            depth = max(0, depth - 1)
        elif depth == 0:
            outside.add(n)
    body = []
    for sym in parsed.symbols:
        if sym.kind == FUNCTION:
            body += [(n, lines[n - 1]) for n in range(sym.start_line + 2, sym.end_line) if n in outside]
    return body


def _replace_line(text: str, line_no: int, new: str) -> str:
    lines = text.split("\n")
    lines[line_no - 1] = new
    return "\n".join(lines)


def _verdict(result: ValidationResult) -> str:
    """What a validation said, in the benchmark's terms."""
    if not result.check("parse").passed:
        return PARSE_FAILED
    if result.base_tree == "broken":
        return BASE_BROKEN
    if not result.check("build").passed:
        return "build failed"
    return OK if result.success else ROM_CHANGED


def run_validation_bench(repo: Path, env: BuildEnvironment, last: int, *,
                         on_progress: Progress = lambda _: None) -> Report:
    """Replay the newest `last` ROM-preserving commits, each with a mutation and a syntax break, and time them."""
    repo = git_repo.require_repo(repo)
    if last < 1:
        raise InvalidInput("--last must be at least 1")
    picked = candidates(repo, last)
    if not picked:
        raise InvalidInput(f"no commit of {repo} changes only .c/.h files with a documentation, rename or refactor "
                           "subject; nothing to replay")
    env.carried()
    report = Report(repo=str(repo), jobs=env.settings.jobs,
                    machine={"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()})
    for i, commit in enumerate(picked):
        on_progress(f"{i + 1}/{len(picked)} {commit.sha[:10]} {commit.subject[:60]}")
        texts = {p: git_repo.git(repo, "show", f"{commit.sha}:{p}").decode("utf-8", "surrogateescape")
                 for p in commit.files}
        c_files = [p for p in commit.files if p.endswith(".c")]
        pasted = pasted_parameters([*_macro_headers(repo, commit.parent), *texts.values()])
        mutation = next((m for p in c_files if (m := mutate_constant(p, texts[p], pasted))), None)
        broken = next((b for p in c_files if (b := break_syntax(p, texts[p], i))), None)
        plan = [("commit", OK, texts, ",".join(commit.files))]
        if mutation is None or broken is None:
            report.skipped.append({"commit": commit.sha, "reason": "no literal to alter or statement to break in a "
                                                                   "changed .c file outside #if"})
        else:
            path = mutation[1].split(":")[0]
            plan.append(("mutation", ROM_CHANGED, {**texts, path: mutation[0]}, mutation[1]))
            path = broken[1].split(":")[0]
            plan.append(("syntax", PARSE_FAILED, {**texts, path: broken[0]}, broken[1]))
        if i == 0 and git_repo.file_at(repo, commit.parent, HEADER) is not None:
            header = git_repo.file_at(repo, commit.parent, HEADER).decode("utf-8", "surrogateescape")
            plan.append(("header", OK, {HEADER: header + "\n// documented by cra's benchmark\n"}, HEADER))
        history_rebuilds: bool | None = None  # asked once, where the commit or its mutation got a wrong verdict
        for name, expected, files, detail in plan:
            case = _replay(env, commit, name, expected, files, detail)
            if name in ("commit", "mutation") and case.right is False:
                history_rebuilds = _history_keeps_rom(env, commit) if history_rebuilds is None else history_rebuilds
                if not history_rebuilds:  # the mutation is made on the commit's change: it needs it to build too
                    case.right = None
                    case.detail += "; the commit's own tree does not rebuild its parent's ROM here"
            report.cases.append(case)
    return report


def _history_keeps_rom(env: BuildEnvironment, commit: Candidate) -> bool:
    """Whether the commit's own tree, built whole, gives its parent's ROM with this toolchain (else history's
    change cannot be the benchmark's truth here: the agbcc of its day built it otherwise)."""
    def run_build(command: list[str], tree: Path) -> tuple[bool, str]:
        check = run_check("history build", command, tree, env)
        return check.passed, check.log_tail

    parent, own = base_tree(env, commit.parent, run_build), base_tree(env, commit.sha, run_build)
    return parent.ok and own.ok and own.roms == parent.roms


def _macro_headers(repo: Path, commit: str) -> list[str]:
    """The text of every header at `commit` that defines a function-like macro."""
    listed = git_repo.git(repo, "grep", "-l", "-E", r"#[[:space:]]*define[[:space:]]+[A-Za-z_0-9]+\(", commit, "--",
                          "*.h", check=False).decode("utf-8", "surrogateescape").splitlines()
    return [data.decode("utf-8", "surrogateescape") for name in listed
            if (data := git_repo.file_at(repo, commit, name.split(":", 1)[1])) is not None]


def _replay(env: BuildEnvironment, commit: Candidate, name: str, expected: str, files: dict[str, str],
            detail: str) -> Case:
    """Validate `files` at the commit's parent as a ROM-preserving change and compare the verdict."""
    with scratch_folder(SCRATCH_PREFIX) as edited:
        for path, text in files.items():
            (edited / path).parent.mkdir(parents=True, exist_ok=True)
            (edited / path).write_bytes(text.encode("utf-8", "surrogateescape"))
        started = time.monotonic()
        result = validate(edited, sorted(files), base_commit=commit.parent, keep_rom=True, env=env)
        seconds = time.monotonic() - started
    verdict = _verdict(result)
    log = next((c.log_tail for c in result.checks if not c.passed and not c.skipped_reason), "")
    right = None if verdict == BASE_BROKEN else verdict == expected  # cra named the base as the fault: no verdict
    return Case(commit.sha, commit.subject, name, len(files), expected, verdict, right, result.base_tree,
                round(seconds, 3), {k: round(v, 3) for k, v in result.timings.items()}, detail,
                "\n".join(log.splitlines()[-12:]) if verdict != expected else "")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
