"""The index's data model: what parsing one file yields."""

from __future__ import annotations

from dataclasses import dataclass, field

PARSER_VERSION = 2  # raised whenever parsing yields other symbols or references: indexes rebuild in full

# Symbol kinds, in the order a reader meets them in a C file.
FUNCTION = "function"
PROTOTYPE = "prototype"
STRUCT = "struct"
UNION = "union"
ENUM = "enum"
ENUM_CONSTANT = "enum_constant"
TYPEDEF = "typedef"
MACRO = "macro"              # object-like #define
MACRO_FUNCTION = "macro_function"  # function-like #define
GLOBAL = "global"            # file-scope variable or data table
LABEL = "label"              # assembly label in .s / .inc
ASM_MACRO = "asm_macro"      # assembler .macro definition
DOCUMENT = "document"        # one file-level document for other text sources
SYMBOL_KINDS = frozenset({FUNCTION, PROTOTYPE, STRUCT, UNION, ENUM, ENUM_CONSTANT, TYPEDEF, MACRO, MACRO_FUNCTION,
                          GLOBAL, LABEL, ASM_MACRO, DOCUMENT})

# Reference kinds.
CALL = "call"     # f(...)
VALUE = "value"   # a function name used as a value: callback tables, SetMainCallback2(CB2_Foo)
MACRO_USE = "macro"
TYPE_USE = "type"
ASM_USE = "asm"   # a label or macro invoked from assembly


@dataclass(slots=True)
class Symbol:
    """A named definition or declaration in one file."""

    name: str
    kind: str
    path: str
    start_line: int
    end_line: int
    signature: str = ""
    is_static: bool = False
    body_hash: str = ""
    section: str = ""
    detail: str = ""
    id: str = ""  # set by assign_ids: path::kind::name, with #n for repeats in one file


@dataclass(slots=True)
class Reference:
    """A use of a name inside a definition (or at file scope when `src` is the file path)."""

    src: str
    name: str
    kind: str
    line: int
    recovered: bool = False


@dataclass(slots=True)
class Include:
    """An #include (or assembler .include) directive."""

    target: str
    line: int
    system: bool = False


@dataclass(slots=True)
class ParsedFile:
    """Everything the index keeps about one source file."""

    path: str
    lang: str
    sha: str
    size: int
    n_lines: int
    text: str
    error_nodes: int = 0
    raw_error_nodes: int = 0
    tokens: str = ""  # the text's code tokens for full-text search (tokens.token_text), made where it is parsed
    symbols: list[Symbol] = field(default_factory=list)
    refs: list[Reference] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)


@dataclass(slots=True)
class Skipped:
    """A file the index did not parse, and why."""

    path: str
    reason: str


def assign_ids(parsed: ParsedFile) -> None:
    """Give each symbol a stable id and point references at their enclosing symbol ids."""
    seen: dict[str, int] = {}
    for sym in parsed.symbols:
        base = f"{parsed.path}::{sym.kind}::{sym.name}"
        n = seen.get(base, 0) + 1
        seen[base] = n
        sym.id = base if n == 1 else f"{base}#{n}"
