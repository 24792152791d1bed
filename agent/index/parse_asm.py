"""Parsing of GNU assembler sources (.s, .inc) and of plain text files, by linear-time regexes."""

from __future__ import annotations

import re

from agent.index.symbols import (
    ASM_MACRO,
    ASM_USE,
    DOCUMENT,
    LABEL,
    Include,
    ParsedFile,
    Reference,
    Symbol,
    assign_ids,
)

# One assembler line: an optional `Label:` / `Label::`, then the statement up to an `@` or `//` comment.
_LINE_RE = re.compile(
    rb"^[ \t]*(?:([A-Za-z_.$][\w.$]*)[ \t]*(::?)(?!:))?[ \t]*"
    rb"((?:[^\n@\"/;]|\"(?:\\.|[^\"\\\n])*\"|/(?![/*]))*)",
    re.MULTILINE,
)
_IDENT_RE = re.compile(rb"(?<![\w.$\\])[A-Za-z_][\w.$]*")
_STRING_RE = re.compile(rb"\"(?:\\.|[^\"\\\n])*\"")
_BLOCK_COMMENT_RE = re.compile(rb"/\*.*?\*/", re.DOTALL)
_MAX_SIGNATURE = 200

# Directives whose identifier operands name symbols (pointer tables: `.4byte gBattleScript_Foo`).
_DATA_DIRECTIVES = frozenset({b".4byte", b".2byte", b".byte", b".word", b".hword", b".short", b".int", b".long"})
# Directives that make the named label global.
_GLOBAL_DIRECTIVES = frozenset({b".global", b".globl"})
# pret macros that open a function: `thumb_func_start Name` (asm/macros/function.inc).
_FUNC_START_MACROS = frozenset({b"thumb_func_start", b"arm_func_start", b"non_word_aligned_thumb_func_start"})
# ARM/Thumb mnemonics, with condition and size suffixes: instructions, not macro uses.
_MNEMONIC_RE = re.compile(
    rb"(?:adc|add|adr|and|asr|b|bic|bl|blx|bx|cmn|cmp|eor|ldm|ldr|lsl|lsr|mla|mov|mrs|msr|mul|mull|mvn|neg|nop"
    rb"|orr|pop|push|ror|rsb|rsc|sbc|smull|smlal|stm|str|sub|svc|swi|swp|teq|tst|umull|umlal)"
    rb"(?:eq|ne|cs|hs|cc|lo|mi|pl|vs|vc|hi|ls|ge|lt|gt|le|al)?(?:s|b|h|sb|sh|ia|ib|da|db|fd|ed|fa|ea)?"
)
_REGISTER_RE = re.compile(rb"(?:r\d{1,2}|sp|lr|pc|ip|fp|sl|cpsr|spsr)(?:_\w+)?", re.IGNORECASE)


def fill_asm(pf: ParsedFile, data: bytes) -> None:
    """Add the labels, .macro definitions, includes and label/macro uses of one assembler file to `pf`."""
    body = _BLOCK_COMMENT_RE.sub(lambda m: b"\n" * m.group(0).count(b"\n"), data) if b"/*" in data else data
    labels: dict[str, int] = {}  # label name -> index in pf.symbols
    declared_global: dict[str, int] = {}  # name -> line of its `.global` / `thumb_func_start`
    uses: list[tuple[int, str, int]] = []  # (index of the enclosing symbol or -1, name, line)
    owner = macro = -1
    line, pos = 1, 0
    for m in _LINE_RE.finditer(body):
        line += body.count(b"\n", pos, m.start())
        pos = m.start()
        label, colons, stmt = m.group(1), m.group(2), m.group(3).strip()
        if label is not None and macro < 0:
            name = label.decode("ascii", "replace")
            if name not in labels:
                labels[name] = owner = len(pf.symbols)
                pf.symbols.append(Symbol(name, LABEL, pf.path, line, line, is_static=colons == b":"))
        if not stmt:
            continue
        parts = stmt.split(None, 1)
        op, rest = parts[0], parts[1] if len(parts) > 1 else b""
        src = macro if macro >= 0 else owner
        if op in (b".include", b"#include"):
            pf.includes.append(Include(rest.strip(b'"<> \t').decode("utf-8", "replace"), line, rest.startswith(b"<")))
        elif op == b".macro":
            name = re.split(rb"[\s,]", rest, maxsplit=1)[0].decode("ascii", "replace")
            macro = len(pf.symbols)
            sig = stmt.decode("utf-8", "replace")[:_MAX_SIGNATURE]
            pf.symbols.append(Symbol(name, ASM_MACRO, pf.path, line, line, signature=sig))
        elif op == b".endm":
            if macro >= 0:
                pf.symbols[macro].end_line = line
            macro = -1
        elif op in _GLOBAL_DIRECTIVES or op in _FUNC_START_MACROS:
            for name in _IDENT_RE.findall(rest):
                declared_global.setdefault(name.decode("ascii", "replace"), line)
            if op in _FUNC_START_MACROS:
                uses.append((src, op.decode("ascii"), line))
        elif op.startswith(b"#") or (op.startswith(b".") and op not in _DATA_DIRECTIVES):
            continue
        else:
            if not op.startswith((b".", b"\\")) and _MNEMONIC_RE.fullmatch(op.lower()) is None:
                uses.append((src, op.decode("ascii", "replace"), line))
            for name in _IDENT_RE.findall(_STRING_RE.sub(b"", rest)):
                if _REGISTER_RE.fullmatch(name) is None:
                    uses.append((src, name.decode("ascii", "replace"), line))
    for name, decl_line in declared_global.items():
        if name in labels:
            pf.symbols[labels[name]].is_static = False
        else:
            pf.symbols.append(Symbol(name, LABEL, pf.path, decl_line, decl_line))
    _close_label_spans(pf.symbols, pf.n_lines)
    assign_ids(pf)
    seen: set[tuple[str, str]] = set()
    for index, name, use_line in uses:
        src = pf.symbols[index].id if index >= 0 else pf.path
        if (src, name) not in seen:
            seen.add((src, name))
            pf.refs.append(Reference(src, name, ASM_USE, use_line))


def _close_label_spans(syms: list[Symbol], last_line: int) -> None:
    """Extend each label down to the line before the next label."""
    labels = sorted((s for s in syms if s.kind == LABEL), key=lambda s: s.start_line)
    for i, cur in enumerate(labels):
        end = labels[i + 1].start_line - 1 if i + 1 < len(labels) else last_line
        cur.end_line = max(cur.start_line, end)


def fill_text(pf: ParsedFile) -> None:
    """Add one DOCUMENT symbol spanning the whole text file (JSON, Makefile, notes) to `pf`."""
    pf.symbols.append(Symbol(pf.path, DOCUMENT, pf.path, 1, max(pf.n_lines, 1)))
    assign_ids(pf)
