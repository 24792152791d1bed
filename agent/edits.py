"""SEARCH/REPLACE edit blocks from the code stage: matched exactly or ignoring whitespace, applied all or nothing."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath
from typing import Literal

from pydantic import BaseModel

from agent.errors import (
    AmbiguousMatch,
    BinaryFile,
    EditError,
    FileAlreadyExists,
    MissingFile,
    NoChange,
    NoMatch,
    PathOutsideRepo,
)

SNIFF_BYTES = 8192  # a NUL byte this early means binary content, as git decides
QUOTE_LINES = 6  # lines of a SEARCH block quoted back in a failure message
MIN_SIMILARITY = 0.5  # the closest lines of a file are suggested only from this similarity up
CANDIDATES = 20  # ranges of a file scored when looking for the lines most like a failed SEARCH block
CLOSE_ANCHORS = 5  # lines of a SEARCH block looked up by similarity when none occurs in the file as it is
NEW_FILE_MODE = 0o644


class Edit(BaseModel):
    """One SEARCH/REPLACE block: `search` in `path` becomes `replace`; an empty `search` creates the file."""

    path: str
    search: str
    replace: str


@dataclass(frozen=True)
class Applied:
    """Where an edit landed: 1-based lines of the text it replaced (of the new content, for a created file)."""

    path: str
    how: Literal["exact", "whitespace", "created"]
    start_line: int
    end_line: int


@dataclass
class _File:
    """A file as the edits of one call see it: text with LF newlines, and what it takes to write it back."""

    target: Path
    text: str
    crlf: bool
    original: bytes | None  # None: created by this call

    def encoded(self) -> bytes:
        """The text as it goes to disk, in the file's newline style."""
        return (self.text.replace("\n", "\r\n") if self.crlf else self.text).encode("utf-8")


def apply_edits(root: Path, edits: Sequence[Edit]) -> list[Applied]:
    """Apply `edits` in order to the files under `root`: all of them, or none when one raises an EditError."""
    root = Path(root).resolve()
    files: dict[str, _File] = {}
    applied = []
    for number, edit in enumerate(edits, 1):
        try:
            applied.append(_apply(root, files, edit))
        except EditError as err:
            err.block, err.blocks = number, len(edits)
            raise
    _write_all(files)
    return applied


def format_feedback(error: EditError) -> str:
    """The text given back to the code stage after its edits failed: which block, why, and what to send instead."""
    which = f"Edit block {error.block} of {error.blocks}" if error.block else "An edit block"
    return (f"{which} ({error.path}) failed, so none of the edits were applied.\n\n{error}\n\n"
            "Send all the edit blocks again, with this one fixed.")


# ---------------------------------------------------------------------------------------------
# One edit, on the in-memory copies
# ---------------------------------------------------------------------------------------------
def _apply(root: Path, files: dict[str, _File], edit: Edit) -> Applied:
    """Apply one edit to `files` (loading its file first if needed) and say where it landed."""
    rel, target = resolve_in_repo(root, edit.path)
    search, replace = _lf(edit.search), _lf(edit.replace)
    if not search and not replace.strip():
        raise NoChange(f"The SEARCH block is empty, which creates {rel}, but the REPLACE block is empty too. Give "
                       "the new file's content, or leave the block out.", path=rel)
    if search == replace:
        raise NoChange("The REPLACE block is the same as the SEARCH block, so it changes nothing. Put the changed "
                       "lines in REPLACE, or leave the block out.", path=rel)
    if not search:
        if rel in files or target.exists():
            raise FileAlreadyExists(f"{rel} already exists, so an empty SEARCH block cannot create it. To change it, "
                                    "put the lines to replace in the SEARCH block.", path=rel)
        files[rel] = _File(target, replace, _is_crlf(edit.replace), None)
        return Applied(rel, "created", 1, max(1, len(_split(replace))))
    if rel not in files:
        files[rel] = _load(rel, target)
    file = files[rel]

    starts = _find_all(file.text, search)
    if len(starts) == 1:
        start = starts[0]
        first = file.text.count("\n", 0, start) + 1
        file.text = file.text[:start] + replace + file.text[start + len(search):]
        return Applied(rel, "exact", first, first + search.removesuffix("\n").count("\n"))
    if starts:
        raise _ambiguous(rel, search, [file.text.count("\n", 0, s) + 1 for s in starts])

    lines = _split(file.text)
    want = _trimmed(search)
    spans = _loose_matches(lines, want)
    if len(spans) == 1:
        i, j = spans[0]
        if replace and not replace.endswith("\n") and lines[j - 1].endswith("\n"):
            replace += "\n"
        elif replace.endswith("\n") and not lines[j - 1].endswith("\n"):
            replace = replace[:-1]  # the match ends the file, which has no final newline: keep it so
        file.text = "".join(lines[:i]) + replace + "".join(lines[j:])
        return Applied(rel, "whitespace", i + 1, j)
    if spans:
        raise _ambiguous(rel, search, [i + 1 for i, _ in spans])
    raise NoMatch(_no_match_message(rel, search, lines, want), path=rel)


def resolve_in_repo(root: Path, path: str) -> tuple[str, Path]:
    """The repo-relative posix path and the real file an edit's `path` names; PathOutsideRepo if not ours."""
    hint = "Give a path relative to the repository's top level, such as src/main.c."
    if not path.strip() or Path(path).is_absolute() or PureWindowsPath(path).drive:
        raise PathOutsideRepo(f"{path!r} is not a path inside the repository. {hint}", path=path)
    try:
        rel = (root / path).resolve().relative_to(root)
    except (OSError, RuntimeError, ValueError):  # outside root, a symlink loop, a NUL byte
        raise PathOutsideRepo(f"{path} leads outside the repository. {hint}", path=path) from None
    if not rel.parts:
        raise PathOutsideRepo(f"{path!r} names the repository itself, not a file. {hint}", path=path)
    if any(part.lower() == ".git" for part in rel.parts):
        raise PathOutsideRepo(f"{path} is inside .git, which edits must not touch. {hint}", path=path)
    return rel.as_posix(), root / rel


def _load(rel: str, target: Path) -> _File:
    """A file's current text; MissingFile or BinaryFile when it cannot be edited as text."""
    if not target.is_file():
        if target.is_dir():
            raise MissingFile(f"{rel} is a directory, not a file.", path=rel)
        siblings = [p.name for p in target.parent.iterdir()] if target.parent.is_dir() else []
        close = difflib.get_close_matches(target.name, siblings, n=3)
        hint = f" Did you mean {', '.join(str(Path(rel).parent / c) for c in close)}?" if close else ""
        raise MissingFile(f"{rel} does not exist.{hint} To create a new file, use an empty SEARCH block.",
                          path=rel)
    data = target.read_bytes()
    if b"\0" in data[:SNIFF_BYTES]:
        raise BinaryFile(f"{rel} is a binary file; it cannot be edited with SEARCH/REPLACE blocks.", path=rel)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise BinaryFile(f"{rel} is not UTF-8 text; it cannot be edited with SEARCH/REPLACE blocks.",
                         path=rel) from None
    return _File(target, _lf(text), _is_crlf(text), data)


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------
def _lf(text: str) -> str:
    """`text` with CRLF newlines as LF."""
    return text.replace("\r\n", "\n")


def _is_crlf(text: str) -> bool:
    """Whether every newline of `text` is CRLF (a file with mixed newlines is kept as it is)."""
    newlines = text.count("\n")
    return newlines > 0 and text.count("\r\n") == newlines


def _split(text: str) -> list[str]:
    """Lines with their `\\n` (only `\\n` ends a line: form feeds and the like stay inside)."""
    parts = text.split("\n")
    return [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _norm(line: str) -> str:
    """A line with its ends stripped and each run of whitespace inside as one space."""
    return " ".join(line.split())


def _trimmed(search: str) -> list[str]:
    """The normalized lines of a SEARCH block, without blank lines at either end."""
    want = [_norm(line) for line in search.split("\n")]
    while want and not want[0]:
        want.pop(0)
    while want and not want[-1]:
        want.pop()
    return want


def _find_all(text: str, search: str) -> list[int]:
    """Every offset where `search` occurs in `text`, overlapping ones included."""
    found, pos = [], text.find(search)
    while pos != -1:
        found.append(pos)
        pos = text.find(search, pos + 1)
    return found


def _loose_matches(lines: list[str], want: list[str]) -> list[tuple[int, int]]:
    """Line ranges [i, j) of `lines` equal to `want` once whitespace is normalized."""
    if not want:
        return []
    have = [_norm(line) for line in lines]
    n = len(want)
    return [(i, i + n) for i in range(len(have) - n + 1) if have[i] == want[0] and have[i:i + n] == want]


def _closest(lines: list[str], want: list[str]) -> tuple[int, int] | None:
    """The range [i, j) of `lines` most like `want` (difflib ratio, whitespace normalized), if similar enough.

    Candidate ranges are those where lines of `want` occur, exactly or else nearly; only they are scored.
    """
    have = [_norm(line) for line in lines]
    n = min(len(want), len(have))
    where: dict[str, list[int]] = defaultdict(list)
    for i, line in enumerate(have):
        where[line].append(i)
    anchors = [(k, [line]) for k, line in enumerate(want) if line and line in where]
    if not anchors:
        anchors = [(k, difflib.get_close_matches(line, where, n=3, cutoff=MIN_SIMILARITY))
                   for k, line in enumerate(want[:CLOSE_ANCHORS]) if line]
    votes: Counter[int] = Counter()
    for k, similar in anchors:
        for line in similar:
            votes.update(max(0, min(i - k, len(have) - n)) for i in where[line])
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2("\n".join(want))
    best, span = MIN_SIMILARITY, None
    for start, _ in votes.most_common(CANDIDATES):
        matcher.set_seq1("\n".join(have[start:start + n]))
        ratio = matcher.ratio()
        if ratio > best:
            best, span = ratio, (start, start + n)
    return span


# ---------------------------------------------------------------------------------------------
# Messages for the model
# ---------------------------------------------------------------------------------------------
def _quote(search: str) -> str:
    """The first lines of a SEARCH block, fenced."""
    lines = search.strip("\n").split("\n")
    more = f"\n... ({len(lines) - QUOTE_LINES} more lines)" if len(lines) > QUOTE_LINES else ""
    return "```\n" + "\n".join(lines[:QUOTE_LINES]) + more + "\n```"


def _ambiguous(rel: str, search: str, lines: list[int]) -> AmbiguousMatch:
    """The error for a SEARCH block found at each of `lines`."""
    where = ", ".join(map(str, lines))
    return AmbiguousMatch(
        f"The SEARCH block for {rel} matches {len(lines)} places (lines {where}), so it is unclear which one "
        f"to change. It begins:\n{_quote(search)}\nAdd unchanged lines before or after it, to both SEARCH and "
        "REPLACE, until it matches exactly one place.", path=rel, lines=lines)


def _no_match_message(rel: str, search: str, lines: list[str], want: list[str]) -> str:
    """Why a SEARCH block matched nothing, with the lines of the file it most resembles."""
    text = (f"The SEARCH block for {rel} matches nothing in the file, even ignoring whitespace. "
            f"It begins:\n{_quote(search)}\n")
    span = _closest(lines, want)
    if span:
        i, j = span
        actual = "".join(lines[i:j]).removesuffix("\n")
        where = f"line {j}" if j == i + 1 else f"lines {i + 1}-{j}"
        text += f"The most similar part of {rel} is {where}:\n```\n{actual}\n```\n"
    return text + ("The SEARCH block must copy the file's current lines exactly, comments and blank lines "
                   "included; read them again from the file before writing it.")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def _write_all(files: dict[str, _File]) -> None:
    """Write every changed file atomically; if one write fails, put back those already written."""
    written: list[_File] = []
    for rel, file in files.items():
        data = file.encoded()
        if data == file.original:
            continue
        try:
            _write_atomic(file.target, data)
        except OSError as exc:
            _restore(written)
            raise EditError(f"{rel} could not be written: {exc.strerror or exc}", path=rel) from exc
        written.append(file)


def _restore(files: Iterable[_File]) -> None:
    """Put files back as they were before this call: rewritten, or removed if it created them."""
    for file in files:
        if file.original is None:
            file.target.unlink(missing_ok=True)
        else:
            _write_atomic(file.target, file.original)


def _write_atomic(target: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `target`, then rename it over `target` (keeping its mode)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o7777 if target.exists() else NEW_FILE_MODE
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
