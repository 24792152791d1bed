"""Tests for agent.index.parse: decomp-aware C parsing, assembler and text files, skipping by content."""

from __future__ import annotations

import hashlib
import pickle

import pytest

from agent.index.parse import language_of, mask_c, parse_file, syntax_problems
from agent.index.symbols import (
    ASM_MACRO,
    ASM_USE,
    CALL,
    DOCUMENT,
    ENUM,
    ENUM_CONSTANT,
    FUNCTION,
    GLOBAL,
    LABEL,
    MACRO,
    MACRO_FUNCTION,
    MACRO_USE,
    PROTOTYPE,
    STRUCT,
    TYPE_USE,
    TYPEDEF,
    VALUE,
    ParsedFile,
    Skipped,
    Symbol,
)

DECOMP_C = b"""\
#include "global.h"
#include <stdio.h>
#include "constants/songs.h"

#define NUM_THINGS 4
#define THING_ID(x) ((x) + NUM_THINGS)

EWRAM_DATA u8 gFoo = 0;
static EWRAM_DATA u16 sBar[NUM_THINGS] = {0};
IWRAM_DATA u32 gBaz;
COMMON_DATA u16 ALIGNED(4) gRecvCmds[5][8] = {0};

static const ALIGNED(4) u8 sThing_Gfx[] = INCBIN_U8("graphics/thing.4bpp.lz");
static const u16 sThing_Pal[] = INCBIN_U16("graphics/thing.gbapal");

static const struct OamData sOam_Thing =
{
    .y = DISPLAY_HEIGHT,
    .shape = SPRITE_SHAPE(64x64),
    .size = SPRITE_SIZE(64x64),
};

static const union AnimCmd sAnim_Thing[] =
{
    ANIMCMD_FRAME(0, 4, .hFlip = TRUE),
    ANIMCMD_FRAME(.imageValue = 1, .duration = 16),
    ANIMCMD_END
};

static const struct Thing sThings[] =
{
#include "data/things.h"
};

struct Thing
{
    u8 id;
    u16 flags;
};

enum
{
    THING_NONE,
    THING_BIG = 3,
};

typedef void (*ThingFunc)(u8 taskId);

static void Task_Thing(u8 taskId);
static void CB2_Thing(void);
void StartThing(void);

static const TaskFunc sThingTasks[] = {Task_ThingA, Task_ThingB};

NAKED
static void Thing_Naked(void)
{
    asm_unified("push {lr}\\n\\
    bl Thing_Helper\\n\\
    pop {pc}");
}

static void UNUSED Thing_Unused(void)
{
}

void StartThing(void)
{
    SetMainCallback2(CB2_Thing);
    CreateTask(Task_Thing, 80);
    gMain.callback2 = CB2_Thing;
    gTasks[0].func = &Task_Thing;
    PlaySE(SE_SELECT);
#ifdef BUGFIX
    if (gFoo && gBaz)
#else
    if (gFoo)
#endif
    {
        DoThing(THING_ID(1));
    }
}

static void CB2_Thing(void)
{
    RunTasks();
    AnimateSprites();
}
"""


def _line(data: bytes, needle: bytes, nth: int = 1) -> int:
    """1-based line of the nth occurrence of `needle`."""
    pos = -1
    for _ in range(nth):
        pos = data.index(needle, pos + 1)
    return data.count(b"\n", 0, pos) + 1


def _parse(path: str, data: bytes) -> ParsedFile:
    result = parse_file(path, data)
    assert isinstance(result, ParsedFile), result
    return result


def _sym(pf: ParsedFile, name: str, kind: str) -> Symbol:
    matches = [s for s in pf.symbols if s.name == name and s.kind == kind]
    assert len(matches) == 1, (name, kind, [(s.name, s.kind) for s in pf.symbols])
    return matches[0]


@pytest.fixture(scope="module")
def thing() -> ParsedFile:
    return _parse("src/thing.c", DECOMP_C)


def test_decomp_constructs_parse_without_error_nodes(thing: ParsedFile) -> None:
    assert thing.raw_error_nodes > 0  # plain tree-sitter-c chokes on these macros
    assert thing.error_nodes == 0


def test_masking_keeps_length_and_lines() -> None:
    masked, spans = mask_c(DECOMP_C)
    assert len(masked) == len(DECOMP_C)
    assert masked.count(b"\n") == DECOMP_C.count(b"\n")
    assert [i for i, c in enumerate(masked) if c == 10] == [i for i, c in enumerate(DECOMP_C) if c == 10]
    assert spans and all(masked[s:e] != DECOMP_C[s:e] for s, e in spans)
    assert b"EWRAM_DATA" not in masked and b"64x64" not in masked


def test_file_fields(thing: ParsedFile) -> None:
    assert thing.lang == "c"
    assert thing.sha == hashlib.sha1(b"blob %d\0" % len(DECOMP_C) + DECOMP_C).hexdigest()
    assert thing.size == len(DECOMP_C)
    assert thing.n_lines == DECOMP_C.count(b"\n")
    assert thing.text == DECOMP_C.decode()


def test_globals_with_sections_and_static(thing: ParsedFile) -> None:
    foo = _sym(thing, "gFoo", GLOBAL)
    assert (foo.section, foo.is_static, foo.start_line) == ("EWRAM_DATA", False, _line(DECOMP_C, b"EWRAM_DATA u8"))
    assert foo.signature.startswith("EWRAM_DATA u8 gFoo")
    bar = _sym(thing, "sBar", GLOBAL)
    assert (bar.section, bar.is_static) == ("EWRAM_DATA", True)
    assert _sym(thing, "gBaz", GLOBAL).section == "IWRAM_DATA"
    assert _sym(thing, "gRecvCmds", GLOBAL).section == "COMMON_DATA"
    gfx = _sym(thing, "sThing_Gfx", GLOBAL)
    assert gfx.is_static and gfx.section == ""
    assert 'INCBIN_U8("graphics/thing.4bpp.lz")' in gfx.detail
    oam = _sym(thing, "sOam_Thing", GLOBAL)
    assert (oam.start_line, oam.end_line) == (_line(DECOMP_C, b"sOam_Thing"), _line(DECOMP_C, b".size =") + 1)
    assert _sym(thing, "sThings", GLOBAL)


def test_functions_prototypes_and_static(thing: ParsedFile) -> None:
    start = _sym(thing, "StartThing", FUNCTION)
    assert not start.is_static
    assert start.signature == "void StartThing(void)"
    assert len(start.body_hash) == 40
    naked = _sym(thing, "Thing_Naked", FUNCTION)
    assert naked.is_static and naked.signature.startswith("NAKED")
    assert _sym(thing, "Thing_Unused", FUNCTION).is_static
    assert _sym(thing, "Task_Thing", PROTOTYPE).is_static
    assert not _sym(thing, "StartThing", PROTOTYPE).is_static
    cb2 = _sym(thing, "CB2_Thing", FUNCTION)
    assert (cb2.start_line, cb2.end_line) == (DECOMP_C.count(b"\n") - 4, DECOMP_C.count(b"\n"))


def test_types_enums_and_macros(thing: ParsedFile) -> None:
    assert _sym(thing, "Thing", STRUCT).detail == "id, flags"
    assert _sym(thing, "THING_BIG", ENUM_CONSTANT).detail == "3"
    assert _sym(thing, "THING_NONE", ENUM_CONSTANT)
    assert not [s for s in thing.symbols if s.kind == ENUM]  # anonymous
    assert _sym(thing, "ThingFunc", TYPEDEF).signature == "typedef void (*ThingFunc)(u8 taskId)"
    assert _sym(thing, "NUM_THINGS", MACRO).detail == "4"
    func_macro = _sym(thing, "THING_ID", MACRO_FUNCTION)
    assert func_macro.signature == "THING_ID(x)" and func_macro.detail == "((x) + NUM_THINGS)"


def test_includes(thing: ParsedFile) -> None:
    got = [(i.target, i.line, i.system) for i in thing.includes]
    assert got == [("global.h", 1, False), ("stdio.h", 2, True), ("constants/songs.h", 3, False),
                   ("data/things.h", _line(DECOMP_C, b"data/things.h"), False)]


def test_call_sites_with_lines(thing: ParsedFile) -> None:
    src = "src/thing.c::function::StartThing"
    calls = [(r.name, r.line) for r in thing.refs if r.kind == CALL and r.src == src]
    assert calls == [("SetMainCallback2", _line(DECOMP_C, b"SetMainCallback2")),
                     ("CreateTask", _line(DECOMP_C, b"CreateTask")), ("PlaySE", _line(DECOMP_C, b"PlaySE")),
                     ("DoThing", _line(DECOMP_C, b"DoThing")), ("THING_ID", _line(DECOMP_C, b"DoThing"))]
    cb2_calls = [r.name for r in thing.refs if r.kind == CALL and r.src == "src/thing.c::function::CB2_Thing"]
    assert cb2_calls == ["RunTasks", "AnimateSprites"]


def test_callbacks_as_values(thing: ParsedFile) -> None:
    values = {(r.src.split("::")[-1], r.name) for r in thing.refs if r.kind == VALUE}
    assert {("StartThing", "CB2_Thing"), ("StartThing", "Task_Thing")} <= values
    assert {("sThingTasks", "Task_ThingA"), ("sThingTasks", "Task_ThingB")} <= values
    per_src = [(r.src, r.name) for r in thing.refs if r.kind == VALUE]
    assert len(per_src) == len(set(per_src))  # deduplicated
    assert not any(r.name == "TRUE" for r in thing.refs if r.kind == VALUE)


def test_macro_and_type_uses(thing: ParsedFile) -> None:
    macros = {(r.src.split("::")[-1], r.name) for r in thing.refs if r.kind == MACRO_USE}
    assert ("StartThing", "SE_SELECT") in macros
    assert ("sOam_Thing", "DISPLAY_HEIGHT") in macros
    assert ("THING_ID", "NUM_THINGS") in macros  # from the macro's own body
    types = {(r.src.split("::")[-1], r.name) for r in thing.refs if r.kind == TYPE_USE}
    assert ("sThingTasks", "TaskFunc") in types


def test_bugfix_branches_do_not_break_the_function(thing: ParsedFile) -> None:
    start = _sym(thing, "StartThing", FUNCTION)
    assert (start.start_line, start.end_line) == (_line(DECOMP_C, b"void StartThing", 2), _line(DECOMP_C, b"}\n\n", 3))


def test_static_functions_with_one_name_in_two_files() -> None:
    src = b"static void Helper(void)\n{\n    Other();\n}\n"
    a, b = _parse("src/a.c", src), _parse("src/b.c", src)
    ha, hb = _sym(a, "Helper", FUNCTION), _sym(b, "Helper", FUNCTION)
    assert ha.is_static and hb.is_static and ha.id != hb.id
    assert ha.body_hash == hb.body_hash
    assert [r.src for r in a.refs if r.kind == CALL] == [ha.id]


def test_body_hash_ignores_comments_and_layout() -> None:
    one = _parse("a.c", b"void F(void) { G(1); /* note */ }\n")
    two = _parse("b.c", b"void F(void)\n{\n    G(1); // other note\n}\n")
    assert _sym(one, "F", FUNCTION).body_hash == _sym(two, "F", FUNCTION).body_hash


def test_statement_macro_without_semicolon_is_fixed() -> None:
    src = (b"void F(u8 battler)\n{\n    switch (battler)\n    {\n    case 0:\n"
           b"        PREPARE_MON_NICK_BUFFER(gBattleTextBuff1, battler, 0)\n"
           b"        PREPARE_ABILITY_BUFFER(gBattleTextBuff2, gLastUsedAbility)\n"
           b"        BattleScriptPush(gBattlescriptCurrInstr + 1);\n        break;\n    }\n}\n")
    pf = _parse("src/battle.c", src)
    assert pf.error_nodes == 0
    calls = [(r.name, r.line) for r in pf.refs if r.kind == CALL]
    assert sorted(calls, key=lambda c: c[1]) == [("PREPARE_MON_NICK_BUFFER", 6), ("PREPARE_ABILITY_BUFFER", 7),
                                                 ("BattleScriptPush", 8)]


def test_macro_statement_without_semicolon_before_assignment() -> None:
    src = (b"void F(void)\n{\n    if (x)\n    {\n        LandBall()\n"
           b"        sBall->speed = GetSpeed();\n    }\n}\n")
    pf = _parse("src/roulette.c", src)
    assert pf.error_nodes == 0
    assert sorted((r.name, r.line) for r in pf.refs if r.kind == CALL) == [("GetSpeed", 6), ("LandBall", 5)]


def test_calls_in_plain_error_regions_are_marked_recovered() -> None:
    src = b'static const ALIGNED(4) u8 sGfx[] = INCBIN_U8("a.4bpp");\nvoid F(void)\n{\n    G();\n}\n'
    pf = _parse("src/gfx.c", src)
    assert pf.raw_error_nodes > 0 and pf.error_nodes == 0  # plain tree-sitter sees no call in the ERROR
    calls = {r.name: r for r in pf.refs if r.kind == CALL}
    assert set(calls) == {"INCBIN_U8", "G"} and calls["INCBIN_U8"].recovered
    assert _sym(pf, "sGfx", GLOBAL).detail == 'INCBIN_U8("a.4bpp")'


def test_token_scan_recovers_calls_where_errors_remain() -> None:
    src = b'static const SECTION(4) u8 sGfx[] = MakeGfx("a.4bpp");\nvoid F(void)\n{\n    Baz();\n}\n'
    pf = _parse("src/broken.c", src)
    assert pf.error_nodes > 0
    calls = [(r.name, r.line, r.recovered) for r in pf.refs if r.kind == CALL]
    assert sorted(calls) == [("Baz", 4, True), ("MakeGfx", 1, True)]


def test_inactive_branch_calls_are_token_scanned() -> None:
    src = (b"void F(void)\n{\n#ifdef BUGFIX\n    if (a && Check())\n#else\n    if (a)\n#endif\n"
           b"    {\n        Act();\n    }\n}\n")
    pf = _parse("src/f.c", src)
    assert pf.error_nodes == 0
    assert {r.name for r in pf.refs if r.kind == CALL} == {"Check", "Act"}


def test_file_scope_macro_invocation() -> None:
    src = (b"movement_type_def(MovementType_Wander, gMovementTypeFuncs_Wander)\n\n"
           b"bool8 MovementType_Wander_Step0(struct ObjectEvent *obj)\n{\n    ClearObjectEventMovement(obj);\n"
           b"    return TRUE;\n}\n")
    pf = _parse("src/event_object_movement.c", src)
    assert pf.error_nodes == 0
    assert _sym(pf, "MovementType_Wander_Step0", FUNCTION)
    refs = {(r.name, r.kind) for r in pf.refs}
    assert {("movement_type_def", CALL), ("gMovementTypeFuncs_Wander", VALUE), ("MovementType_Wander", VALUE),
            ("ClearObjectEventMovement", CALL)} <= refs


def test_non_utf8_source_does_not_crash() -> None:
    src = b"// \x82\xa0\x82\xa2 Shift-JIS, caf\xe9 latin-1\nvoid F(void)\n{\n    G();\n}\n"
    pf = _parse("src/jp.c", src)
    assert "\ufffd" in pf.text
    assert _sym(pf, "F", FUNCTION).start_line == 2
    assert [r.name for r in pf.refs if r.kind == CALL] == ["G"]


ASM = b"""\
\t.include "asm/macros.inc"
#include "constants/songs.h"

\t.macro call_thing dest:req
\t.byte 0x01
\t.4byte \\dest
\t.endm

\tthumb_func_start Thing_Asm
Thing_Asm:
\tpush {lr}
\tbl Thing_Helper @ a comment naming NotAUse
\tldr r0, =gThingData
\tpop {pc}
\tthumb_func_end Thing_Asm

gThingScripts::
\t.4byte Thing_ScriptA
\tcall_thing Thing_ScriptB

Thing_Local:
\t.byte 0
"""


def test_asm_labels_macros_and_uses() -> None:
    pf = _parse("asm/thing.s", ASM)
    assert pf.lang == "asm"
    assert _sym(pf, "call_thing", ASM_MACRO).end_line == 7
    label = _sym(pf, "Thing_Asm", LABEL)
    assert (label.start_line, label.is_static) == (10, False)
    assert not _sym(pf, "gThingScripts", LABEL).is_static
    assert _sym(pf, "Thing_Local", LABEL).is_static
    uses = {(r.src.split("::")[-1], r.name) for r in pf.refs if r.kind == ASM_USE}
    assert {("Thing_Asm", "Thing_Helper"), ("Thing_Asm", "gThingData"), ("gThingScripts", "Thing_ScriptA"),
            ("gThingScripts", "call_thing"), ("gThingScripts", "Thing_ScriptB")} <= uses
    assert not {name for _, name in uses} & {"push", "bl", "ldr", "r0", "lr", "pc", "NotAUse", "dest"}
    assert [(i.target, i.line) for i in pf.includes] == [("asm/macros.inc", 1), ("constants/songs.h", 2)]


def test_text_files_are_one_document() -> None:
    pf = _parse("Makefile", b"all: rom\n\trom: $(OBJS)\n")
    assert pf.lang == "text"
    assert [(s.name, s.kind, s.start_line, s.end_line) for s in pf.symbols] == [("Makefile", DOCUMENT, 1, 2)]
    assert pf.refs == []
    latin = _parse("data/notes.txt", b"caf\xe9\n")
    assert latin.text == "caf\ufffd\n"


@pytest.mark.parametrize(
    ("path", "data", "reason"),
    [
        ("graphics/thing.png", b"\x89PNG\r\n", "unsupported file type"),
        ("src/blob.c", b"\x00\x01\x02\x03" * 100, "binary content"),
        ("data/blob.inc", bytes(range(1, 32)) * 50, "binary content"),
        ("src/huge.h", b"int x;\n" * 400_000, "too large"),
        ("data/dump.json", b"[" + b"1," * 20_000 + b"1]", "generated content"),
    ],
)
def test_skipped_by_name_and_content(path: str, data: bytes, reason: str) -> None:
    result = parse_file(path, data)
    assert isinstance(result, Skipped) and result.path == path
    assert result.reason.startswith(reason)


def test_language_of() -> None:
    paths = ("a.c", "b.h", "c.s", "d.inc", "e.S", "f.json", "g.txt", "h.mk", "src/GNUmakefile", "i.png", "j.py")
    assert [language_of(p) for p in paths] == ["c", "h", "asm", "asm", "asm", "text", "text", "text", "text", None,
                                               None]


def test_parse_file_pickles_for_worker_pools(thing: ParsedFile) -> None:
    assert pickle.loads(pickle.dumps(parse_file)) is parse_file
    assert pickle.loads(pickle.dumps(thing)) == thing


@pytest.mark.parametrize("path", ["src/empty.c", "include/empty.h", "asm/empty.s", "data/empty.json"])
def test_empty_files(path: str) -> None:
    pf = _parse(path, b"")
    assert (pf.n_lines, pf.error_nodes, pf.refs, pf.includes) == (0, 0, [], [])


def test_asm_without_labels() -> None:
    pf = _parse("asm/macros/thing.inc", b"\t.macro thing_cmd arg:req\n\t.byte \\arg\n\t.endm\n")
    assert [(s.name, s.kind, s.start_line, s.end_line) for s in pf.symbols] == [("thing_cmd", ASM_MACRO, 1, 3)]


SYNTAX_BASE = b"""#include "global.h"
EWRAM_DATA static u8 sCount = 0;
#define TRACE(x)
void Step(u8 x)
{
    u8 y = x + 1;
    Bar(y);
    TRACE(y)
    switch (x)
    {
    case 1:
        y = 2;
        break;
    }
}
"""


@pytest.mark.parametrize(("old", "new", "what"), [
    (b"Bar(y);", b"Bar(y)", "Bar read as a macro call"),  # the validation looks for a #define of Bar
    (b"u8 y = x + 1;", b"u8 y = x + 1", "syntax error"),
    (b"switch (x)", b"swich (x)", "a function or declaration inside a function body"),  # after a macro line
    (b"        break;\n    }\n", b"        break;\n    }\n    {\n", "missing '}'"),
    (b"        y = 2;", b"        y = 2", "syntax error"),
])
def test_syntax_problems_the_decomp_fixups_would_hide(old: bytes, new: bytes, what: str) -> None:
    # A bare macro line is noted with its name (the validation checks that a #define gives it)
    assert [p.macro for p in syntax_problems(SYNTAX_BASE)] == ["TRACE"]
    broken = SYNTAX_BASE.replace(old, new)
    problems = [p for p in syntax_problems(broken) if p.macro != "TRACE"]
    assert problems and problems[0].what.startswith(what), problems
    assert problems[0].line == next(i for i, line in enumerate(broken.split(b"\n"), 1) if new.split(b"\n")[0] in line
                                    ) or what == "missing '}'"


SEPARATOR_MACRO = b"""#define OLD_UNOWN_BASE_STATS {   \\
        .baseHP = 50,            \\
        .baseAttack = 150,       \\
},

const struct BaseStats gBaseStats[] =
{
    [SPECIES_OLD_UNOWN_B] = OLD_UNOWN_BASE_STATS
    [SPECIES_OLD_UNOWN_C] = OLD_UNOWN_BASE_STATS // the macro brings the comma
    [SPECIES_TREECKO] =
    {
        .baseHP = 40,
        .baseAttack = 45,
    },
};
"""


def test_a_macro_that_ends_with_the_lists_comma_is_no_syntax_problem() -> None:
    # pokeruby's base_stats.h (c50bfde9b7): an object macro whose expansion ends with `,` stands for an item
    assert syntax_problems(SEPARATOR_MACRO) == []
    masked, _ = mask_c(SEPARATOR_MACRO)
    assert len(masked) == len(SEPARATOR_MACRO) and masked.count(b"\n") == SEPARATOR_MACRO.count(b"\n")
    # the same use without the macro's comma is still a missing separator
    assert syntax_problems(SEPARATOR_MACRO.replace(b"150,       \\\n},", b"150,       \\\n}"))
    thing = parse_file("src/data/base_stats.c", SEPARATOR_MACRO)
    assert isinstance(thing, ParsedFile) and thing.error_nodes == 0
