"""Parse one repository file into symbols, references and includes; C through decomp-aware tree-sitter."""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from operator import attrgetter, itemgetter
from posixpath import basename, splitext

import tree_sitter_c
from tree_sitter import Language, Node, Parser, Point, Query, QueryCursor, Tree

from agent.index.parse_asm import fill_asm, fill_text
from agent.index.symbols import (
    CALL,
    ENUM,
    ENUM_CONSTANT,
    FUNCTION,
    GLOBAL,
    MACRO,
    MACRO_FUNCTION,
    MACRO_USE,
    PROTOTYPE,
    STRUCT,
    TYPE_USE,
    TYPEDEF,
    UNION,
    VALUE,
    Include,
    ParsedFile,
    Reference,
    Skipped,
    Symbol,
    assign_ids,
)
from agent.index.tokens import token_text
from agent.repo import blob_sha

C_LANGUAGE = Language(tree_sitter_c.language())
_PARSER = Parser(C_LANGUAGE)

# File types, by name: everything else is skipped.
_LANG_BY_SUFFIX = {".c": "c", ".h": "h", ".s": "asm", ".S": "asm", ".inc": "asm", ".json": "text", ".txt": "text",
                   ".mk": "text"}
_TEXT_NAMES = frozenset({"Makefile", "makefile", "GNUmakefile"})

# Content limits: bigger, binary or machine-generated files are skipped whatever their name.
MAX_FILE_BYTES = 2_000_000
MAX_AVG_LINE_BYTES = 2_000  # a minified or dumped data file, not source
SNIFF_BYTES = 8192
MAX_CONTROL_RATIO = 0.05
_CONTROL_BYTES = bytes(b for b in range(32) if b not in b"\t\n\v\f\r\x1b") + b"\x7f"

MAX_FIX_ROUNDS = 3
EDIT_MERGE_GAP = 64  # masked spans closer than this are one edit for the incremental reparse
MAX_DETAIL = 200
MAX_SIGNATURE = 300

# ---------------------------------------------------------------------------------------------
# Masking: pret macros that tree-sitter-c misreads, rewritten before parsing. Every replacement
# has the length of what it replaces and keeps its newlines, so byte offsets and lines hold.
# ---------------------------------------------------------------------------------------------
_BLANK = bytes(b if b == 0x0A else 0x20 for b in range(256))  # translate table: all but \n -> space
MaskRule = tuple[str, bytes, re.Pattern[bytes], Callable[[re.Match[bytes]], bytes]]


def _blank(m: re.Match[bytes]) -> bytes:
    """The match as spaces, newlines kept."""
    return m.group(0).translate(_BLANK)


def _blank_directive(m: re.Match[bytes]) -> bytes:
    """A preprocessor line as spaces, unless its `#` does not start the line (a comment's text)."""
    return m.group(0).translate(_BLANK) if _at_line_start(m.string, m.start()) else m.group(0)


def _at_line_start(data: bytes, pos: int) -> bool:
    """Whether only blanks precede byte `pos` on its line."""
    return not data[data.rfind(b"\n", 0, pos) + 1:pos].strip()


def _dimension(m: re.Match[bytes]) -> bytes:
    """`SPRITE_SHAPE(64x32` with the number `64032`."""
    return m.group(0).replace(b"x", b"0")


def _undesignate(m: re.Match[bytes]) -> bytes:
    """`(0, .hFlip = TRUE)` macro arguments as the assignments `(0,  hFlip = TRUE)`."""
    return _DESIGNATOR_ARG_RE.sub(rb"\1 ", m.group(0))


def _untag(m: re.Match[bytes]) -> bytes:
    """`(struct T` as `(       T`."""
    return b"(" + m.group(0)[1:].translate(_BLANK)


def _zero(m: re.Match[bytes]) -> bytes:
    """An expression as the number 0, padded with spaces."""
    return b"0" + m.group(0)[1:].translate(_BLANK)


def _plus(m: re.Match[bytes]) -> bytes:
    """`...` as ` + `."""
    return b" + "


def _word_rule(macro: str) -> MaskRule:
    """Blank every use of an attribute-like object macro."""
    word = macro.encode()
    return (macro, word, re.compile(word + rb"(?<!\w" + word + rb")(?!\w)"), _blank)


_DESIGNATOR_ARG_RE = re.compile(rb"([(,][ \t]*)\.(?=[A-Za-z_]\w*[ \t]*=[^=])")

# (pret construct, literal the file must contain for the rule to run, pattern, replacement).
# Patterns start with a literal so that the regex engine can skip ahead.
MASK_RULES: tuple[MaskRule, ...] = (
    # #define / #include / #undef / #pragma lines with their continuations: macros and includes are read
    # from the raw text by regex, and `#include "data/foo.h"` inside initializers breaks the parse.
    ("#define, #include", b"#", re.compile(
        rb"#(?<![^\s]#)[ \t]*(?:define|include|undef|pragma)\b(?:[^\n\\/]|\\[\s\S]|/\*[\s\S]*?\*/|/)*"),
     _blank_directive),
    # Section and attribute macros of include/global.h, between storage class, type and declarator.
    *(_word_rule(m) for m in ("EWRAM_DATA", "IWRAM_DATA", "COMMON_DATA", "BSS_DATA", "BSS_CODE",
                              "NAKED", "NOINLINE", "UNUSED")),
    # ALIGNED(4) (global.h): between type and declarator, where tree-sitter sees a call.
    ("ALIGNED(n)", b"ALIGNED", re.compile(rb"ALIGNED(?<!\wALIGNED)[ \t]*\([^()\n]*\)"), _blank),
    # `register u32 r4 asm("r4") = x;` (pokeruby fakematches): a register variable declaration.
    ("asm(\"rN\") variable", b"asm", re.compile(
        rb"asm(?<!\wasm)[ \t]*\([ \t]*\"(?:r\d+|sp|lr|pc|ip|fp|sl)\"[ \t]*\)"), _blank),
    # __attribute__((...)) spelled out.
    ("__attribute__", b"__attribute__", re.compile(rb"__attribute__[ \t]*\(\((?:[^()]|\([^()]*\))*\)\)"), _blank),
    # SPRITE_SHAPE(64x32), SPRITE_SIZE(32x8) (sprite.h): `64x32` is no C token.
    ("SPRITE_SHAPE(WxH)", b"SPRITE_S", re.compile(rb"SPRITE_S(?:HAPE|IZE)[ \t]*\([ \t]*[1-9]\d*x\d+"), _dimension),
    # ANIMCMD_FRAME(0, 4, .hFlip = TRUE), ANIMCMD_FRAME(.imageValue = 1) (sprite.h): designators as arguments.
    ("ANIMCMD_FRAME(.f = x)", b".", re.compile(
        rb"\((?<=[A-Z0-9_]\()(?:[^(){};\n]*,)?[ \t]*\.[A-Za-z_]\w*[ \t]*=[^=][^(){};\n]*\)"), _undesignate),
    # SAVEBLOCK_CHUNK(struct SaveBlock2, 0) (save.c): a type as a macro argument.
    ("MACRO(struct T)", b"(", re.compile(rb"\((?<=[A-Z0-9_]\()[ \t]*(?:struct|union)(?=[ \t]+\w+[ \t]*[,)])"), _untag),
    # offsetof(struct SaveBlock2, frontier.challengeStatus), offsetof(typeof(*p), x): member paths and
    # typeof, which tree-sitter-c's offsetof rejects.
    ("offsetof(T, a.b)", b"offsetof", re.compile(
        rb"offsetof(?<!\woffsetof)[ \t]*\((?=[^;\n]*?(?:typeof|,[ \t]*\w+[ \t]*[.\[]))(?:[^()]|\([^()]*\))*\)"), _zero),
    # GNU case ranges `case 1 ... 9:` (pokeblock_feed.c, tv.c): `...` becomes ` + `.
    ("case A ... B", b"...", re.compile(rb"\.\.\.(?<=[\w)\s]\.\.\.)(?=[ \t]*[-\w(][^:\n]*:)"), _plus),
)

# Default build configuration of pret's games, for choosing #if branches that split C constructs.
# None means "not defined".
BUILD_CONFIG: dict[bytes, int | None] = {
    b"BUGFIX": None, b"UBFIX": None, b"NONMATCHING": None, b"DEBUG_FIX": None, b"SAPPHIRE": None,
    b"GERMAN": None, b"LEAFGREEN": None, b"MODERN": 0, b"DEBUG": 0, b"REVISION": 0,
    b"ENGLISH": 1, b"RUBY": 1, b"FIRERED": 1, b"NDEBUG": 1,
}

_DIRECTIVE_RE = re.compile(rb"^[ \t]*#[ \t]*(if|ifdef|ifndef|elif|else|endif)\b([^\n]*)", re.MULTILINE)
_COND_TOKEN_RE = re.compile(
    rb"\s*(?:defined\s*(?:\(\s*([A-Za-z_]\w*)\s*\)|([A-Za-z_]\w*))|([A-Za-z_]\w*)"
    rb"|(0[xX][0-9a-fA-F]+|\d+)[uUlL]*|(&&|\|\||==|!=|<=|>=|[()<>!+\-*/]))"
)
_COMMENT_RE = re.compile(rb"//[^\n]*|/\*[\s\S]*?\*/")
_STRING_OR_COMMENT_RE = re.compile(rb"(\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')|//[^\n]*|/\*[\s\S]*?\*/")
# Binary preprocessor operators: (precedence, function).
_BINARY_OPS: dict[bytes, tuple[int, Callable[[int, int], int]]] = {
    b"||": (1, lambda a, b: int(bool(a) or bool(b))), b"&&": (2, lambda a, b: int(bool(a) and bool(b))),
    b"==": (3, lambda a, b: int(a == b)), b"!=": (3, lambda a, b: int(a != b)),
    b"<": (4, lambda a, b: int(a < b)), b">": (4, lambda a, b: int(a > b)),
    b"<=": (4, lambda a, b: int(a <= b)), b">=": (4, lambda a, b: int(a >= b)),
    b"+": (5, lambda a, b: a + b), b"-": (5, lambda a, b: a - b),
    b"*": (6, lambda a, b: a * b), b"/": (6, lambda a, b: a // b),
}

# A macro invocation alone on its line, without the `;` or `,` its expansion supplies:
# `PREPARE_ABILITY_BUFFER(a, b)` then `break;` (battle_util.c), `LandBall()` (roulette.c), battle_dome.c's
# LINESECTION_* initializer items, file-scope `movement_type_def(A, B)` (event_object_movement.c),
# X-macro lists `FOREACH_TM(ENUM_TM)` inside enums (item.h). The last two are blanked, then token-scanned.
_BARE_MACRO_LINE_RE = re.compile(
    rb"^([ \t]*)(?!(?:if|for|while|switch|return|sizeof|else|do|case|typedef|struct|union|enum)\b)"
    rb"(?:([A-Za-z_]\w*)[ \t]*\((?:[^();{}]|\((?:[^();{}]|\([^();{}]*\))*\))*\)|([A-Z_][A-Z0-9_]*))"
    rb"[ \t]*(?://[^\n]*)?(?=\n(?:[ \t]*(?://[^\n]*)?\n)*([ \t]*)([A-Za-z_{}(*#])|[ \t\n]*\Z)",
    re.MULTILINE,
)
# The syntactic context of a bare macro line, from its nearest telling ancestor in the first parse.
_STATEMENT, _INITIALIZER, _ENUM, _FILE_SCOPE = "statement", "initializer", "enum", "file"
_CONTEXT_BY_NODE = {
    "initializer_list": _INITIALIZER, "init_declarator": _INITIALIZER,
    "compound_statement": _STATEMENT, "case_statement": _STATEMENT, "if_statement": _STATEMENT,
    "else_clause": _STATEMENT, "for_statement": _STATEMENT, "while_statement": _STATEMENT,
    "do_statement": _STATEMENT, "labeled_statement": _STATEMENT,
    "translation_unit": _FILE_SCOPE,
    "argument_list": "", "parameter_list": "", "field_declaration_list": "", "enumerator_list": _ENUM,
    "parenthesized_expression": "", "binary_expression": "", "comment": "", "string_literal": "",
}
_SEPARATORS = {_STATEMENT: b";", _INITIALIZER: b","}

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------
_REF_QUERY = Query(C_LANGUAGE, """
(call_expression function: (identifier) @call)
(initializer_list (identifier) @value)
(initializer_pair value: (identifier) @value)
(argument_list (identifier) @value)
(assignment_expression right: (identifier) @value)
(init_declarator value: (identifier) @value)
(pointer_expression operator: "&" argument: (identifier) @value)
(return_statement (identifier) @value)
(conditional_expression consequence: (identifier) @value)
(conditional_expression alternative: (identifier) @value)
((identifier) @macro (#match? @macro "^[A-Z_][A-Z0-9_]+$"))
(type_identifier) @type
(ERROR) @error
""")
_ERROR_QUERY = Query(C_LANGUAGE, "(ERROR) @error")
_BROKEN_QUERY = Query(C_LANGUAGE, "(ERROR) @broken (MISSING) @broken")
# Shapes tree-sitter-c accepts inside a function body but pret's C never has: a nested function definition
# (`swich (x) {` or a call missing its `;` before a block) and a declaration typed by a macro call.
_NESTED_QUERY = Query(C_LANGUAGE, "(compound_statement (function_definition) @nested) "
                                  "(compound_statement (declaration type: (macro_type_specifier) @nested))")

_DEFINE_RE = re.compile(rb"#(?<![^\s]#)[ \t]*define[ \t]+([A-Za-z_]\w*)(\([^)\n]*\))?((?:[^\n\\]|\\[\s\S])*)")
_INCLUDE_RE = re.compile(rb"#(?<![^\s]#)[ \t]*include[ \t]*([<\"])([^>\"\n]+)[>\"]")
_SECTION_RE = re.compile(rb"\b(EWRAM_DATA|IWRAM_DATA|COMMON_DATA|BSS_DATA|BSS_CODE)\b")
_CAPS_RE = re.compile(r"[A-Z_][A-Z0-9_]+")
_WS_RE = re.compile(rb"\s+")
# Tokens for scanning unparsed text (macro bodies, ERROR regions): strings and comments are skipped.
_TOKEN_RE = re.compile(
    rb"\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'|//[^\n]*|/\*[\s\S]*?\*/|([A-Za-z_]\w*)|(->|\S)")
_KEYWORDS = frozenset(
    b"auto break case char const continue default do double else enum extern float for goto if inline int long "
    b"register restrict return short signed sizeof static struct switch typedef union unsigned void volatile while "
    b"asm __asm__ __attribute__ defined _Static_assert typeof __typeof__ _Alignof alignof".split())
_STATEMENT_KEYWORDS = frozenset(b"return case else do".split())
# Nodes whose children are file-scope items: #if groups, `extern "C" { ... }`, and ERROR nodes.
_CONTAINERS = frozenset({"preproc_if", "preproc_ifdef", "preproc_else", "preproc_elif", "preproc_elifdef",
                         "linkage_specification", "declaration_list", "ERROR"})
_START_BYTE = attrgetter("start_byte")
_WORD_RE = re.compile(rb"[A-Za-z_]\w*")
_LONE_CALL_RE = re.compile(r"([A-Za-z_]\w*)\s*\(.*\)$")  # a line that is one call, without its ';'
_LABEL_RE = re.compile(r"[A-Za-z_]\w*:$")
_TAG_KINDS = {"struct_specifier": STRUCT, "union_specifier": UNION, "enum_specifier": ENUM}


def language_of(path: str) -> str | None:
    """The language cra indexes a repo-relative path as ("c", "h", "asm", "text"), or None."""
    name = basename(path)
    if name in _TEXT_NAMES:
        return "text"
    return _LANG_BY_SUFFIX.get(splitext(name)[1])


def parse_file(path: str, data: bytes) -> ParsedFile | Skipped:
    """Parse one file (repo-relative posix `path`, raw `data`) into symbols, references and includes."""
    lang = language_of(path)
    if lang is None:
        return Skipped(path, "unsupported file type")
    reason = _skip_reason(data)
    if reason:
        return Skipped(path, reason)
    text = data.decode("utf-8", errors="replace")
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    pf = ParsedFile(path, lang, blob_sha(data), len(data), n_lines, text, tokens=token_text(text))
    if lang == "asm":
        fill_asm(pf, data)
    elif lang == "text":
        fill_text(pf)
    else:
        _fill_c(pf, data)
    return pf


def _skip_reason(data: bytes) -> str:
    """Why content is not worth indexing (binary, too large, generated), or "" when it is."""
    if b"\0" in data:
        return "binary content"
    sample = data[:SNIFF_BYTES]
    if sample and len(sample) - len(sample.translate(None, _CONTROL_BYTES)) > MAX_CONTROL_RATIO * len(sample):
        return "binary content"
    if len(data) > MAX_FILE_BYTES:
        return f"too large ({len(data)} bytes)"
    if len(data) > SNIFF_BYTES and len(data) / (data.count(b"\n") + 1) > MAX_AVG_LINE_BYTES:
        return "generated content (very long lines)"
    return ""


# ---------------------------------------------------------------------------------------------
# C: masking and preprocessor branches
# ---------------------------------------------------------------------------------------------
def mask_c(data: bytes) -> tuple[bytes, list[tuple[int, int]]]:
    """Apply MASK_RULES and the file's separator macros; returns the masked bytes (same length, same lines) and
    the byte spans changed."""
    spans: list[tuple[int, int]] = []
    rules = [*MASK_RULES, *(_separator_rule(name) for name in _separator_macros(data))]
    for _construct, literal, pattern, repl in rules:
        if literal in data:
            data = pattern.sub(_recording(repl, spans), data)
    return data, spans


def _separator_macros(data: bytes) -> list[str]:
    """Object macros the file defines whose expansion ends with the `,` that separates items of a list."""
    if b"define" not in data:
        return []
    return [m.group(1).decode() for m in _DEFINE_RE.finditer(data)
            if not m.group(2) and _COMMENT_RE.sub(b"", m.group(3).replace(b"\\\n", b"")).rstrip().endswith(b",")]


def _separator_rule(macro: str) -> MaskRule:
    """A use of `macro` at a line's end, where its expansion supplies the list's `,`, moved left over a blank to
    show the comma (`[A] = OLD_UNOWN_BASE_STATS` then `[B] = ...`: pokeruby's base_stats.h)."""
    word = macro.encode()
    return (f"{macro} (ends with ',')", word,
            re.compile(rb"[ \t]" + word + rb"(?!\w)(?=[ \t]*(?://[^\n]*)?\r?\n)"), lambda m: m.group(0)[1:] + b",")


def _recording(repl: Callable[[re.Match[bytes]], bytes], spans: list[tuple[int, int]]) -> Callable[
        [re.Match[bytes]], bytes]:
    """`repl`, also noting in `spans` each match it changes."""
    def record(m: re.Match[bytes]) -> bytes:
        new = repl(m)
        if new != m.group(0):
            spans.append(m.span())
        return new
    return record


def _reparse(tree: Tree, old: bytes, new: bytes, spans: list[tuple[int, int]]) -> Tree:
    """Parse `new` incrementally from the tree of `old`, which differs from it in place at `spans`."""
    lines = _Lines(old)
    for start, end in _merge_spans(spans, EDIT_MERGE_GAP):
        start_point = Point(lines.at(start) - 1, start - old.rfind(b"\n", 0, start) - 1)
        end_point = Point(lines.at(end) - 1, end - old.rfind(b"\n", 0, end) - 1)
        tree.edit(start, end, end, start_point, end_point, end_point)
    return _PARSER.parse(new, tree)


def _merge_spans(spans: list[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Sorted, disjoint spans covering `spans`, joining those less than `gap` bytes apart."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start - merged[-1][1] < gap or merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _error_nodes(tree: Tree) -> list[Node]:
    """Every ERROR node of a tree."""
    if not tree.root_node.has_error:
        return []
    return QueryCursor(_ERROR_QUERY).captures(tree.root_node).get("error", [])


def _eval_condition(kind: bytes, arg: bytes) -> bool | None:
    """Truth of one #if/#ifdef/#elif under BUILD_CONFIG, or None when it names anything else."""
    if kind == b"else":
        return True
    if kind in (b"ifdef", b"ifndef"):
        words = arg.split()
        name = words[0] if words else b""
        if name not in BUILD_CONFIG:
            return None
        return (BUILD_CONFIG[name] is not None) == (kind == b"ifdef")
    tokens: list[int | bytes] = []
    pos, text = 0, _COMMENT_RE.sub(b" ", arg).rstrip()
    while pos < len(text):
        m = _COND_TOKEN_RE.match(text, pos)
        if m is None:
            return None
        pos = m.end()
        defined, ident, number, op = m.group(1) or m.group(2), m.group(3), m.group(4), m.group(5)
        if defined:
            if defined not in BUILD_CONFIG:
                return None
            tokens.append(int(BUILD_CONFIG[defined] is not None))
        elif ident:
            if ident not in BUILD_CONFIG:
                return None
            tokens.append(BUILD_CONFIG[ident] or 0)
        elif number:
            tokens.append(int(number, 0) if not number.startswith(b"0") or len(number) == 1
                          or number[1:2] in b"xX" else int(number, 8))
        else:
            tokens.append(op)
    try:
        value, rest = _eval_tokens(tokens, 0)
    except (IndexError, ValueError, ZeroDivisionError):
        return None
    return bool(value) if rest == len(tokens) else None


def _eval_tokens(tokens: list[int | bytes], pos: int, min_prec: int = 1) -> tuple[int, int]:
    """Precedence-climbing evaluation of a preprocessor expression; returns (value, next position)."""
    tok = tokens[pos]
    if tok == b"(":
        value, pos = _eval_tokens(tokens, pos + 1)
        if tokens[pos] != b")":
            raise ValueError("unbalanced")
        pos += 1
    elif tok == b"!":
        value, pos = _eval_tokens(tokens, pos + 1, 7)
        value = int(not value)
    elif tok == b"-":
        value, pos = _eval_tokens(tokens, pos + 1, 7)
        value = -value
    elif isinstance(tok, int):
        value, pos = tok, pos + 1
    else:
        raise ValueError("unexpected token")
    while pos < len(tokens) and isinstance(tokens[pos], bytes) and tokens[pos] in _BINARY_OPS:
        prec, fn = _BINARY_OPS[tokens[pos]]  # type: ignore[index]
        if prec < min_prec:
            break
        rhs, pos = _eval_tokens(tokens, pos + 1, prec + 1)
        value = fn(value, rhs)
    return value, pos


def _conditional_groups(data: bytes) -> list[list[re.Match[bytes]]]:
    """Each #if...#endif group as its directive matches (#if, #elif/#else..., #endif), outermost last."""
    groups: list[list[re.Match[bytes]]] = []
    stack: list[list[re.Match[bytes]]] = []
    for m in _DIRECTIVE_RE.finditer(data):
        kind = m.group(1)
        if kind in (b"if", b"ifdef", b"ifndef"):
            stack.append([m])
        elif not stack:
            return []  # unbalanced: leave the file to tree-sitter
        elif kind == b"endif":
            stack[-1].append(m)
            groups.append(stack.pop())
        else:
            stack[-1].append(m)
    return groups if not stack else []


def _resolve_group(group: list[re.Match[bytes]], out: bytearray, blanked: list[tuple[int, int]]) -> None:
    """Blank a group's directives and every branch but the one the default build compiles (noted in `blanked`)."""
    active = -1
    for i, m in enumerate(group[:-1]):
        truth = _eval_condition(m.group(1), m.group(2))
        if truth is None or truth:
            active = i
            break
    for i, m in enumerate(group):
        out[m.start():m.end()] = m.group(0).translate(_BLANK)
        if i < len(group) - 1 and i != active:
            out[m.end():group[i + 1].start()] = out[m.end():group[i + 1].start()].translate(_BLANK)
            blanked.append((m.end(), group[i + 1].start()))


def _fix_by_context(masked: bytes, tree: Tree) -> tuple[bytes, list[tuple[int, int]], list[tuple[int, int]],
                                                       list[tuple[int, str, bool]]]:
    """Masking that needs a parse with errors: #if groups that split constructs, and bare macro lines.

    Returns the new bytes, the spans changed, the spans blanked whose references need a token scan, and the
    (offset, name, in a statement) of each line read as a bare macro call.
    """
    out = bytearray(masked)
    spans: list[tuple[int, int]] = []
    blanked: list[tuple[int, int]] = []
    macro_lines: list[tuple[int, str, bool]] = []
    errors = [_error_scope(e, masked) for e in QueryCursor(_BROKEN_QUERY).captures(tree.root_node).get("broken", [])]
    for group in _conditional_groups(masked) if b"#" in masked else []:
        start, end = group[0].start(), group[-1].end()
        if any(s < end and e > start for s, e in errors):
            spans.append((start, end))
            _resolve_group(group, out, blanked)
    for m in _BARE_MACRO_LINE_RE.finditer(masked):
        name_at = m.start(2) if m.group(2) else m.start(3)
        if out[name_at] != masked[name_at]:
            continue  # in a branch just blanked
        context = _context_of(tree.root_node.descendant_for_byte_range(name_at, name_at))
        name = (m.group(2) or m.group(3)).decode("utf-8", "replace")
        if context in _SEPARATORS:
            if m.group(4) and m.group(5) != b"#":  # the separator goes into the next line's indentation
                out[m.start(4)] = _SEPARATORS[context][0]
                spans.append((m.start(4), m.start(4) + 1))
                macro_lines.append((name_at, name, context == _STATEMENT))
        elif context == _ENUM or (context == _FILE_SCOPE and not m.group(1) and m.group(5) not in (b"{", b"}")):
            out[m.start():m.end()] = masked[m.start():m.end()].translate(_BLANK)
            spans.append(m.span())
            blanked.append(m.span())
            if context != _ENUM or m.group(2):  # a lone name in an enum is its last enumerator: C as it is
                macro_lines.append((name_at, name, False))
    return bytes(out), spans, blanked, macro_lines


def _error_scope(error: Node, data: bytes) -> tuple[int, int]:
    """The bytes an ERROR or MISSING node disturbs: its parent's below file scope, and the next line.

    An #if group that splits a construct often sits just beside the error it causes.
    """
    parent = error.parent
    node = error if parent is None or parent.type == "translation_unit" else parent
    next_line_end = data.find(b"\n", data.find(b"\n", node.end_byte) + 1)
    return node.start_byte, len(data) if next_line_end < 0 else next_line_end


def _context_of(node: Node | None) -> str:
    """Whether a node sits in a statement list, an initializer list or at file scope ("" if unsure)."""
    while node is not None:
        context = _CONTEXT_BY_NODE.get(node.type)
        if context is not None:
            return context
        node = node.parent
    return ""


def _merged_ranges(nodes: list[Node]) -> tuple[list[int], list[int]]:
    """Disjoint (starts, ends) covering the nodes' byte ranges, sorted."""
    merged = _merge_spans([(n.start_byte, n.end_byte) for n in nodes])
    return [s for s, _ in merged], [e for _, e in merged]


def _in_ranges(ranges: tuple[list[int], list[int]], pos: int) -> bool:
    """Whether byte `pos` lies in one of the merged ranges."""
    i = bisect_right(ranges[0], pos) - 1
    return i >= 0 and pos < ranges[1][i]


# ---------------------------------------------------------------------------------------------
# C: symbols
# ---------------------------------------------------------------------------------------------
class _Lines:
    """1-based line numbers of byte offsets, counted incrementally for ascending queries."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos, self.line = data, 0, 1

    def at(self, pos: int) -> int:
        """The line holding byte `pos`."""
        if pos < self.pos:
            self.pos, self.line = 0, 1
        self.line += self.data.count(b"\n", self.pos, pos)
        self.pos = pos
        return self.line


def _norm(raw: bytes, limit: int) -> str:
    """Text of `raw` without comments, whitespace collapsed, cut at `limit` characters."""
    raw = raw[:limit * 4]
    if b"/" in raw:
        raw = _STRING_OR_COMMENT_RE.sub(_drop_comment, raw)
    return _WS_RE.sub(b" ", raw).strip().decode("utf-8", "replace")[:limit]


def _drop_comment(m: re.Match[bytes]) -> bytes:
    """A string literal as itself, a comment as a space."""
    return m.group(1) or b" "


def _body_hash(raw: bytes) -> str:
    """sha1 of a body with comments dropped and whitespace collapsed."""
    if b"/" in raw:
        raw = _STRING_OR_COMMENT_RE.sub(_drop_comment, raw)
    return hashlib.sha1(_WS_RE.sub(b" ", raw).strip()).hexdigest()


class _CExtractor:
    """Collects the symbols of one C file and the byte ranges that own references."""

    def __init__(self, pf: ParsedFile, data: bytes, masked: bytes) -> None:
        self.pf, self.data, self.masked = pf, data, masked
        self.owners: list[tuple[int, int, int, bool]] = []  # (start, end, symbol index, top level)
        self.def_sites: set[int] = set()  # start bytes of defining names: not references

    def add(self, node: Node, name_node: Node, kind: str, top: bool, own: tuple[int, int] | None = None,
            *, signature: str = "", is_static: bool = False, body_hash: str = "", section: str = "",
            detail: str = "") -> None:
        """Record one symbol spanning `node`, named by `name_node`; `own` is the byte range its references lie in."""
        self.pf.symbols.append(Symbol(name_node.text.decode("utf-8", "replace"), kind, self.pf.path,
                                      node.start_point[0] + 1, node.end_point[0] + 1, signature, is_static,
                                      body_hash, section, detail))
        start, end = own or (node.start_byte, node.end_byte)
        self.owners.append((start, end, len(self.pf.symbols) - 1, top))
        self.def_sites.add(name_node.start_byte)

    def top_level(self, root: Node) -> None:
        """Symbols of every file-scope item, looking through #if groups and ERROR nodes."""
        for item in _top_items(root):
            t = item.type
            if t == "function_definition":
                self.function(item)
            elif t == "declaration":
                self.declaration(item)
            elif t == "type_definition":
                self.typedef(item)
            elif t in _TAG_KINDS:
                self.tagged(item, True)

    def head_start(self, node: Node) -> int:
        """Where a declaration starts in the raw text, masked macros before it (`EWRAM_DATA`, `NAKED`) included."""
        start = node.start_byte
        line_start = self.data.rfind(b"\n", 0, start) + 1
        if self.masked[line_start:start].strip():
            return start
        if self.data[line_start:start].strip():
            start = line_start
        while line_start > 0:  # whole lines above that held only masked macros
            prev = self.data.rfind(b"\n", 0, line_start - 1) + 1
            raw = self.data[prev:line_start - 1].strip()
            if not raw or raw.startswith(b"#") or self.masked[prev:line_start - 1].strip():
                break
            start = line_start = prev
        return start

    def function(self, node: Node) -> None:
        """A function definition."""
        body = node.child_by_field_name("body")
        fdecl = _function_declarator(node.child_by_field_name("declarator"))
        name = _declared_name(fdecl)
        if body is None or name is None:
            return
        sig = _norm(self.data[self.head_start(node):body.start_byte], MAX_SIGNATURE)
        self.add(node, name, FUNCTION, True, signature=sig, is_static=_is_static(node),
                 body_hash=_body_hash(self.data[body.start_byte:body.end_byte]))
        self.tagged_in(node)

    def declaration(self, node: Node) -> None:
        """A file-scope declaration: prototypes, globals, and struct/union/enum definitions in its type."""
        self.tagged_in(node)
        static = _is_static(node)
        extern = any(c.type == "storage_class_specifier" and c.text == b"extern" for c in node.children)
        own_start = node.start_byte  # the first declarator also owns the type's references
        for decl in node.children_by_field_name("declarator"):
            value = decl.child_by_field_name("value") if decl.type == "init_declarator" else None
            target = decl.child_by_field_name("declarator") if decl.type == "init_declarator" else decl
            own = (own_start, decl.end_byte)
            own_start = decl.start_byte
            fdecl = _function_declarator(target)
            inner = fdecl.child_by_field_name("declarator") if fdecl is not None else None
            if inner is not None and inner.type == "identifier":
                sig = _norm(self.data[self.head_start(node):node.end_byte].rstrip(b";"), MAX_SIGNATURE)
                self.add(node, inner, PROTOTYPE, True, own, signature=sig, is_static=static)
                continue
            name = _declared_name(target)
            if name is None:
                continue
            head = self.data[self.head_start(node):value.start_byte if value is not None else decl.end_byte]
            section = _SECTION_RE.search(head)
            if extern:
                detail = "extern"
            else:
                detail = _norm(self.data[value.start_byte:value.end_byte], MAX_DETAIL) if value is not None else ""
            self.add(node, name, GLOBAL, True, own, signature=_norm(head.rstrip(b"= \t\n"), MAX_SIGNATURE),
                     is_static=static, section=section.group(1).decode() if section else "", detail=detail)

    def typedef(self, node: Node) -> None:
        """A typedef, and the struct/union/enum it may define."""
        detail = self.tagged_in(node)
        spec = node.child_by_field_name("type")
        body = spec.child_by_field_name("body") if spec is not None and spec.type in _TAG_KINDS else None
        raw = self.data[node.start_byte:node.end_byte].rstrip(b";")
        if body is not None:  # `typedef struct Foo {...} Foo`: the fields go to `detail`
            raw = self.data[node.start_byte:body.start_byte] + b"{...}" + self.data[body.end_byte:node.end_byte]
        sig = _norm(raw.rstrip(b";"), MAX_SIGNATURE)
        for decl in node.children_by_field_name("declarator"):
            name = _declared_name(decl)
            if name is not None:
                self.add(node, name, TYPEDEF, True, signature=sig, detail=detail)

    def tagged_in(self, node: Node) -> str:
        """Symbols of the struct/union/enum defined by the `type` of a declaration; returns their detail."""
        spec = node.child_by_field_name("type")
        return self.tagged(spec, False) if spec is not None and spec.type in _TAG_KINDS else ""

    def tagged(self, spec: Node, top: bool) -> str:
        """A struct/union/enum specifier with a body, enum constants included; returns its member list."""
        body = spec.child_by_field_name("body")
        if body is None:
            return ""
        kind = _TAG_KINDS[spec.type]
        members = [m for m in body.named_children if m.type in ("field_declaration", "enumerator")]
        names = [n.text.decode("utf-8", "replace") for n in map(_member_name, members) if n is not None]
        detail = ", ".join(names)[:MAX_DETAIL]
        name = spec.child_by_field_name("name")
        if name is not None:
            self.add(spec, name, kind, top, signature=f"{kind} {name.text.decode('utf-8', 'replace')}", detail=detail)
        if kind == ENUM:
            for enumerator in members:
                self.enumerator(enumerator)
        return detail

    def enumerator(self, node: Node) -> None:
        """One enum constant, its value as detail."""
        name = node.child_by_field_name("name")
        if name is None:
            return
        value = node.child_by_field_name("value")
        vtext = _norm(self.data[value.start_byte:value.end_byte], MAX_DETAIL) if value is not None else ""
        sig = name.text.decode("utf-8", "replace") + (f" = {vtext}" if vtext else "")
        self.add(node, name, ENUM_CONSTANT, False, signature=sig, detail=vtext)

    def macros(self) -> list[tuple[int, frozenset[str], int, int]]:
        """#define symbols read from the raw text; returns (symbol index, parameters, body start, body end)."""
        bodies: list[tuple[int, frozenset[str], int, int]] = []
        lines = _Lines(self.data)
        for m in _DEFINE_RE.finditer(self.data):
            if not _at_line_start(self.data, m.start()):
                continue
            name, params, body = m.group(1).decode(), m.group(2), m.group(3)
            clean = _WS_RE.sub(b" ", _STRING_OR_COMMENT_RE.sub(_drop_comment, body.replace(b"\\\n", b" "))).strip()
            start = lines.at(m.start())
            sym = Symbol(name, MACRO_FUNCTION if params else MACRO, self.pf.path, start,
                         start + m.group(0).count(b"\n"), detail=clean[:MAX_DETAIL].decode("utf-8", "replace"),
                         signature=name + (params.decode("utf-8", "replace") if params else ""))
            names = frozenset(re.findall(r"\w+", params.decode("utf-8", "replace"))) if params else frozenset()
            bodies.append((len(self.pf.symbols), names, m.start(3), m.end(3)))
            self.pf.symbols.append(sym)
        return bodies


def _top_items(node: Node) -> Iterator[Node]:
    """File-scope items under `node`, looking through preprocessor groups and ERROR nodes (any nesting depth)."""
    stack = [iter(node.named_children)]
    while stack:
        child = next(stack[-1], None)
        if child is None:
            stack.pop()
        elif child.type in _CONTAINERS:
            stack.append(iter(child.named_children))
        else:
            yield child


def _is_static(node: Node) -> bool:
    """Whether a declaration carries `static`."""
    return any(c.type == "storage_class_specifier" and c.text == b"static" for c in node.children)


def _function_declarator(node: Node | None) -> Node | None:
    """The function_declarator under pointer/attributed declarators, or None."""
    while node is not None and node.type in ("pointer_declarator", "attributed_declarator"):
        node = node.child_by_field_name("declarator")
    return node if node is not None and node.type == "function_declarator" else None


def _declared_name(node: Node | None) -> Node | None:
    """The identifier a declarator declares."""
    while node is not None:
        if node.type in ("identifier", "type_identifier", "field_identifier"):
            return node
        nxt = node.child_by_field_name("declarator")
        if nxt is None and node.type == "parenthesized_declarator":
            nxt = node.named_children[-1] if node.named_children else None
        node = nxt
    return None


def _member_name(member: Node) -> Node | None:
    """The name of a struct field or enumerator."""
    if member.type == "enumerator":
        return member.child_by_field_name("name")
    return _declared_name(member.child_by_field_name("declarator"))


# ---------------------------------------------------------------------------------------------
# C: the whole file
# ---------------------------------------------------------------------------------------------
@dataclass
class _DecompParse:
    """C source parsed the decomp-aware way: the tree of the masked and fixed-up text, and what the fixes did."""

    tree: Tree
    masked: bytes
    plain_errors: list[Node]
    unparsed: list[tuple[bytes, int, int, bool]]  # (source, start, end, all recovered): to token-scan
    macro_lines: list[tuple[int, str, bool]]  # (offset, name, in a statement) of lines read as bare macro calls


def _decomp_parse(data: bytes) -> _DecompParse:
    """Parse plain, mask pret's macros, then fix by context (#if groups, bare macro lines) until it parses."""
    tree = _PARSER.parse(data)
    plain_errors = _error_nodes(tree)
    masked, spans = mask_c(data)
    if spans:
        tree = _reparse(tree, data, masked, spans)
    unparsed: list[tuple[bytes, int, int, bool]] = []
    macro_lines: list[tuple[int, str, bool]] = []
    for _round in range(MAX_FIX_ROUNDS):  # a fixed #if group can expose its partner further down
        if not tree.root_node.has_error:
            break
        fixed, spans, blanked, lines = _fix_by_context(masked, tree)
        if not spans:
            break
        unparsed += [(masked, start, end, False) for start, end in _merge_spans(blanked)]
        macro_lines += lines
        tree, masked = _reparse(tree, masked, fixed, spans), fixed
    return _DecompParse(tree, masked, plain_errors, unparsed, macro_lines)


@dataclass(frozen=True)
class SyntaxProblem:
    """One place where C does not parse: a syntax error, a missing token, or a line read as a bare macro call."""

    line: int
    what: str
    text: str  # the line, stripped: what identifies the problem across edits that move lines
    macro: str | None = None  # for a bare macro call: the name, which must be a macro for the line to be C
    statement: bool = False  # the call stands as a statement in a function body: the macro must make one


def syntax_problems(data: bytes, rounds: int = MAX_FIX_ROUNDS) -> list[SyntaxProblem]:
    """Every ERROR and MISSING node left after the decomp-aware fixups, and every line they read as a macro call.

    tree-sitter-c reads a bare macro call before a block or a declaration (`TRACE(x)` then `switch (x) {`) as the
    type of a nested definition: such a call is noted as a macro line, blanked, and the text looked at again.
    """
    parsed = _decomp_parse(data)
    lines = data.split(b"\n")
    at = _Lines(data)

    def text(line: int) -> str:
        return lines[line - 1].strip().decode("utf-8", "replace")[:MAX_DETAIL] if line <= len(lines) else ""

    problems = []
    nested = QueryCursor(_NESTED_QUERY).captures(parsed.tree.root_node).get("nested", [])
    macro_types = [t for n in nested if (t := n.child_by_field_name("type") if n.type != "macro_type_specifier" else n)
                   is not None and t.type == "macro_type_specifier"]
    if macro_types and rounds:
        blanked = bytearray(data)
        for node in macro_types:
            blanked[node.start_byte:node.end_byte] = data[node.start_byte:node.end_byte].translate(_BLANK)
            name = node.child_by_field_name("name")
            line = node.start_point[0] + 1
            problems.append(SyntaxProblem(line, f"{name.text.decode() if name else '?'} read as a macro call with "
                                                "no ';'", text(line), name.text.decode() if name else None, True))
        return sorted(problems + [p for p in syntax_problems(bytes(blanked), rounds - 1)
                                  if (p.line, p.macro) not in {(q.line, q.macro) for q in problems}],
                      key=attrgetter("line"))
    for node in sorted(QueryCursor(_BROKEN_QUERY).captures(parsed.tree.root_node).get("broken", []), key=_START_BYTE):
        line = node.start_point[0] + 1
        if node.is_missing and node.type == ";" and (call := _LONE_CALL_RE.match(text(line))):
            problems.append(SyntaxProblem(line, f"{call.group(1)} read as a macro call with no ';'", text(line),
                                          call.group(1), _in_function(node)))  # an X-macro line, or a missing ';'
        elif not (node.is_missing and node.type == ";" and _LABEL_RE.match(text(line))):  # GNU C: `label: }`
            problems.append(SyntaxProblem(line, f"missing '{node.type}'" if node.is_missing else "syntax error",
                                          text(line)))
    for node in nested:
        line = node.start_point[0] + 1  # C only if its first word is a macro; else a missing ';' or a misspelt word
        first = _WORD_RE.match(data, node.start_byte)
        problems.append(SyntaxProblem(line, "a function or declaration inside a function body (a missing ';' or a "
                                            "misspelt keyword?)", text(line),
                                      first.group(0).decode("utf-8", "replace") if first else None, True))
    for pos, name, statement in sorted(parsed.macro_lines):
        line = at.at(pos)
        problems.append(SyntaxProblem(line, f"{name} read as a macro call with no ';'", text(line), name, statement))
    return sorted(problems, key=attrgetter("line"))


def _in_function(node: Node | None) -> bool:
    """Whether `node` lies in a function body."""
    while node is not None and node.type != "compound_statement":
        node = node.parent
    return node is not None


def _fill_c(pf: ParsedFile, data: bytes) -> None:
    """Parse C source with masking, then extract symbols, includes and references into `pf`."""
    parsed = _decomp_parse(data)
    tree, masked, plain_errors, unparsed = parsed.tree, parsed.masked, parsed.plain_errors, parsed.unparsed
    pf.raw_error_nodes = len(plain_errors)
    plain_ranges = _merged_ranges(plain_errors)

    ex = _CExtractor(pf, data, masked)
    macro_bodies = ex.macros()
    ex.top_level(tree.root_node)
    lines = _Lines(data)
    for m in _INCLUDE_RE.finditer(data):
        if _at_line_start(data, m.start()):
            pf.includes.append(Include(m.group(2).decode("utf-8", "replace"), lines.at(m.start()), m.group(1) == b"<"))
    assign_ids(pf)
    refs = _RefCollector(pf, ex.owners)

    caps = QueryCursor(_REF_QUERY).captures(tree.root_node)
    in_plain_error = (lambda pos: _in_ranges(plain_ranges, pos)) if plain_ranges[0] else (lambda pos: False)
    for node in sorted(caps.get("call", []), key=_START_BYTE):
        pos = node.start_byte
        refs.call(pos, node.text.decode(), node.start_point[0] + 1, in_plain_error(pos))
    for capture, kind in (("value", VALUE), ("macro", MACRO_USE), ("type", TYPE_USE)):
        refs.from_tree(caps.get(capture, []), kind, ex.def_sites, plain_ranges)

    # Token-level recovery where no tree is: what still parses as ERROR, and what the fixes blanked
    # (inactive #if branches, file-scope macro lines).
    errors = caps.get("error", [])
    pf.error_nodes = len(errors)
    unparsed += [(masked, start, end, True) for start, end in zip(*_merged_ranges(errors), strict=True)]
    for source, start, end, all_recovered in unparsed:
        for pos, name, kind in _scan_tokens(source, start, end):
            recovered = all_recovered or in_plain_error(pos)
            if kind != CALL:
                refs.add_once(pos, refs.owner_of(pos), name, _kind_for(name, kind), lines.at(pos), recovered)
            elif pos not in refs.call_sites:
                refs.call(pos, name, lines.at(pos), recovered)
    for index, params, start, end in macro_bodies:
        sym = pf.symbols[index]
        for pos, name, kind in _scan_tokens(data, start, end):
            if kind == CALL:
                refs.call(pos, name, lines.at(pos), False, sym.id)
            if _CAPS_RE.fullmatch(name) and name != sym.name and name not in params:
                refs.add_once(pos, sym.id, name, MACRO_USE, lines.at(pos), False)
    pf.refs = refs.in_order()


def _kind_for(name: str, kind: str) -> str:
    """MACRO_USE for an ALL_CAPS name found as a value, else `kind`."""
    return MACRO_USE if kind == VALUE and _CAPS_RE.fullmatch(name) else kind


class _RefCollector:
    """Appends references to a ParsedFile, each attributed to the innermost symbol around it."""

    def __init__(self, pf: ParsedFile, owners: list[tuple[int, int, int, bool]]) -> None:
        self.path = pf.path
        self.items: list[tuple[int, Reference]] = []  # (byte position, reference)
        self.owners = sorted(owners)
        self.starts = [o[0] for o in self.owners]
        # An owner is a leaf when no other owner starts inside it: all its bytes map to it.
        self.leaf = [i + 1 == len(self.owners) or self.starts[i + 1] >= o[1] for i, o in enumerate(self.owners)]
        self.ids = [s.id for s in pf.symbols]
        self.seen: set[tuple[str, str, str]] = set()
        self.call_sites: set[int] = set()
        self.hit = (0, 0, pf.path)  # (start, end, id) of the last leaf owner found

    def owner_of(self, pos: int) -> str:
        """Id of the innermost symbol whose range holds byte `pos`, else the file path."""
        start, end, owner = self.hit
        if start <= pos < end:
            return owner
        i = bisect_right(self.starts, pos) - 1
        while i >= 0:
            start, end, index, top = self.owners[i]
            if pos < end:
                if self.leaf[i]:
                    self.hit = (start, end, self.ids[index])
                return self.ids[index]
            if top:
                break
            i -= 1
        return self.path

    def call(self, pos: int, name: str, line: int, recovered: bool, src: str = "") -> None:
        """One call site, from `src` or else the symbol around byte `pos`."""
        self.call_sites.add(pos)
        self.items.append((pos, Reference(src or self.owner_of(pos), name, CALL, line, recovered)))

    def from_tree(self, nodes: list[Node], kind: str, skip: set[int],
                  plain_errors: tuple[list[int], list[int]]) -> None:
        """VALUE/MACRO/TYPE uses captured in the tree, once per (owner, name, kind); ALL_CAPS values are macros."""
        owner_of, seen, items = self.owner_of, self.seen, self.items
        check_errors = bool(plain_errors[0])
        for node in sorted(nodes, key=_START_BYTE):  # the first use of a name is the one kept
            pos = node.start_byte
            if pos in skip:
                continue
            name = node.text.decode()
            start, end, owner = self.hit
            key = (owner if start <= pos < end else owner_of(pos), name,
                   kind if kind is not VALUE else _kind_for(name, kind))
            if key not in seen:
                seen.add(key)
                recovered = check_errors and _in_ranges(plain_errors, pos)
                items.append((pos, Reference(key[0], name, key[2], node.start_point[0] + 1, recovered)))

    def add_once(self, pos: int, src: str, name: str, kind: str, line: int, recovered: bool) -> None:
        """Append a reference unless (src, name, kind) is already there."""
        key = (src, name, kind)
        if key not in self.seen:
            self.seen.add(key)
            self.items.append((pos, Reference(src, name, kind, line, recovered)))

    def in_order(self) -> list[Reference]:
        """The references in document order."""
        self.items.sort(key=itemgetter(0))
        return [ref for _, ref in self.items]


def _scan_tokens(data: bytes, start: int, end: int) -> Iterator[tuple[int, str, str]]:
    """(position, identifier, CALL or VALUE) for the identifier uses in unparsed C text.

    A call is `name(`; names right after a type or keyword (declarations), after `.`/`->` (fields) and
    keywords themselves are skipped.
    """
    prev = b";"
    pending: tuple[int, bytes] | None = None  # a use waiting to see whether `(` follows
    for m in _TOKEN_RE.finditer(data, start, end):
        ident, punct = m.group(1), m.group(2)
        if ident is None and punct is None:
            continue  # a string or a comment
        if pending is not None:
            yield pending[0], pending[1].decode("ascii", "replace"), CALL if punct == b"(" else VALUE
            pending = None
        if ident is not None and ident not in _KEYWORDS and prev not in (b".", b"->") and \
                (not _is_word(prev) or prev in _STATEMENT_KEYWORDS):
            pending = (m.start(), ident)
        prev = ident if ident is not None else punct
    if pending is not None:
        yield pending[0], pending[1].decode("ascii", "replace"), VALUE


def _is_word(token: bytes) -> bool:
    """Whether a token is an identifier or keyword."""
    return token[:1].isalpha() or token[:1] == b"_"
