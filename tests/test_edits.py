"""SEARCH/REPLACE edits on real files: matching, refusals, feedback for the model, all or nothing."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.edits import Applied, Edit, apply_edits, format_feedback
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
from tests.fixtures.decomp import DecompRepo

TASK_C = """\
#include "global.h"

void ResetTasks(void)
{
\tu8 i;

\tfor (i = 0; i < NUM_TASKS; i++)
\t\tgTasks[i].isActive = FALSE;  \x20
}

void TaskDummy(u8 taskId)
{
}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A small repository tree: src/task.c (tab-indented, a trailing space) beside an outside file."""
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src/task.c").write_text(TASK_C)
    (tmp_path / "outside.txt").write_text("secret\n")
    return repo


def test_exact_match_replaces_the_one_place(root: Path) -> None:
    applied = apply_edits(root, [Edit(path="src/task.c", search="void TaskDummy(u8 taskId)\n",
                                      replace="void TaskNop(u8 taskId)\n")])
    assert applied == [Applied("src/task.c", "exact", 11, 11)]
    assert (root / "src/task.c").read_text() == TASK_C.replace("TaskDummy", "TaskNop")


def test_edits_apply_in_order_to_the_same_file(root: Path) -> None:
    apply_edits(root, [
        Edit(path="src/task.c", search="TaskDummy", replace="TaskNop"),
        Edit(path="src/task.c", search="void TaskNop(u8 taskId)", replace="void TaskNop(u8 id)"),
    ])
    assert "void TaskNop(u8 id)\n" in (root / "src/task.c").read_text()


def test_whitespace_tolerant_match_ignores_tabs_spaces_and_trailing_blanks(root: Path) -> None:
    search = ("    for (i = 0;  i < NUM_TASKS; i++)\n"
              "        gTasks[i].isActive = FALSE;\n")  # spaces where the file has tabs; no trailing space
    replace = "\tfor (i = 0; i < NUM_TASKS; i++)\n\t\tgTasks[i].isActive = TRUE;"  # no final newline
    applied = apply_edits(root, [Edit(path="src/task.c", search=search, replace=replace)])
    assert applied == [Applied("src/task.c", "whitespace", 7, 8)]
    text = (root / "src/task.c").read_text()
    assert "\t\tgTasks[i].isActive = TRUE;\n}\n" in text  # the line range was replaced, newline kept
    assert "FALSE" not in text
    assert text.count("\n") == TASK_C.count("\n")


def test_whitespace_match_at_end_of_file_keeps_the_missing_final_newline(root: Path) -> None:
    (root / "src/a.c").write_text("int a;\nint  b;")
    apply_edits(root, [Edit(path="src/a.c", search="int b;\n", replace="int c;\n")])
    assert (root / "src/a.c").read_text() == "int a;\nint c;"


def test_no_match_feedback_quotes_the_block_and_the_closest_lines(root: Path) -> None:
    search = "void ResetTask(void)\n{\n    u8 j;\n"
    with pytest.raises(NoMatch) as caught:
        apply_edits(root, [Edit(path="src/task.c", search=search, replace="")])
    message = str(caught.value)
    assert caught.value.path == "src/task.c"
    assert "src/task.c" in message and "matches nothing" in message
    assert "void ResetTask(void)" in message  # the block is quoted back
    assert "is lines 3-5" in message and "void ResetTasks(void)\n{\n\tu8 i;" in message  # the file's real lines
    feedback = format_feedback(caught.value)
    assert feedback.startswith("Edit block 1 of 1 (src/task.c) failed, so none of the edits were applied.")
    assert message in feedback
    assert (root / "src/task.c").read_text() == TASK_C
    with pytest.raises(NoMatch, match=r"is line 11:\n```\nvoid TaskDummy\(u8 taskId\)\n```"):
        apply_edits(root, [Edit(path="src/task.c", search="void TaskDumy(u8 taskid);", replace="")])


def test_ambiguous_exact_match_names_every_place(root: Path) -> None:
    with pytest.raises(AmbiguousMatch) as caught:
        apply_edits(root, [Edit(path="src/task.c", search="{\n", replace="{ \n")])
    assert caught.value.lines == [4, 12]
    assert "matches 2 places (lines 4, 12)" in str(caught.value)
    assert (root / "src/task.c").read_text() == TASK_C


def test_ambiguous_whitespace_match(root: Path) -> None:
    (root / "src/b.c").write_text("x = 1;\n\ty = 2;\nx = 1;\n  y = 2;\n")
    with pytest.raises(AmbiguousMatch) as caught:
        apply_edits(root, [Edit(path="src/b.c", search="x = 1;\n y  = 2;\n", replace="")])
    assert caught.value.lines == [1, 3]


def test_empty_search_creates_a_new_file(root: Path) -> None:
    applied = apply_edits(root, [Edit(path="src/new/util.c", search="", replace="int x;\nint y;\n")])
    assert applied == [Applied("src/new/util.c", "created", 1, 2)]
    created = root / "src/new/util.c"
    assert created.read_text() == "int x;\nint y;\n"
    assert stat.S_IMODE(created.stat().st_mode) == 0o644
    assert not [p for p in created.parent.iterdir() if p.name.endswith(".tmp")]


def test_creating_an_existing_file_is_refused(root: Path) -> None:
    with pytest.raises(FileAlreadyExists, match="src/task.c already exists"):
        apply_edits(root, [Edit(path="src/task.c", search="", replace="int x;\n")])
    assert (root / "src/task.c").read_text() == TASK_C


@pytest.mark.parametrize("edit", [
    Edit(path="c", search="", replace=""),  # Gemma 3 270M's code answer: two of these made a "successful" run
    Edit(path="src/new.c", search="", replace="\n  \n"),
    Edit(path="src/task.c", search="void TaskDummy(u8 taskId)", replace="void TaskDummy(u8 taskId)"),
], ids=["empty-file", "blank-file", "same-text"])
def test_an_edit_that_changes_nothing_is_refused(root: Path, edit: Edit) -> None:
    with pytest.raises(NoChange, match="changes nothing|REPLACE block is empty too"):
        apply_edits(root, [Edit(path="src/task.c", search="\tu8 i;", replace="\tu16 i;"), edit])
    assert (root / "src/task.c").read_text() == TASK_C and not (root / "c").exists()


def test_missing_file_suggests_a_close_name(root: Path) -> None:
    with pytest.raises(MissingFile) as caught:
        apply_edits(root, [Edit(path="src/tasks.c", search="x", replace="y")])
    assert "src/tasks.c does not exist. Did you mean src/task.c?" in str(caught.value)


@pytest.mark.parametrize("path", ["../outside.txt", "src/../../outside.txt", "/etc/passwd", ""])
def test_paths_outside_the_repository_are_refused(root: Path, path: str) -> None:
    with pytest.raises(PathOutsideRepo):
        apply_edits(root, [Edit(path=path, search="secret", replace="leaked")])
    assert (root.parent / "outside.txt").read_text() == "secret\n"


def test_creating_outside_the_repository_is_refused(root: Path) -> None:
    with pytest.raises(PathOutsideRepo, match="leads outside the repository"):
        apply_edits(root, [Edit(path="../x", search="", replace="x\n")])
    assert not (root.parent / "x").exists()


def test_symlink_pointing_outside_is_refused(root: Path) -> None:
    (root / "src/link.c").symlink_to(root.parent / "outside.txt")
    (root / "linkdir").symlink_to(root.parent)
    for path in ("src/link.c", "linkdir/outside.txt"):
        with pytest.raises(PathOutsideRepo):
            apply_edits(root, [Edit(path=path, search="secret", replace="leaked")])
    assert (root.parent / "outside.txt").read_text() == "secret\n"


def test_git_directory_is_refused(decomp_repo: DecompRepo) -> None:
    config = (decomp_repo.path / ".git/config").read_bytes()
    for path in (".git/config", "src/../.git/config"):
        with pytest.raises(PathOutsideRepo, match="inside .git"):
            apply_edits(decomp_repo.path, [Edit(path=path, search="[core]", replace="[core]\n\tbare = true")])
    assert (decomp_repo.path / ".git/config").read_bytes() == config


def test_binary_and_non_utf8_files_are_refused(decomp_repo: DecompRepo, root: Path) -> None:
    gfx = decomp_repo.path / "graphics/wallclock/hand.4bpp"
    data = gfx.read_bytes()
    with pytest.raises(BinaryFile, match="binary file"):
        apply_edits(decomp_repo.path, [Edit(path="graphics/wallclock/hand.4bpp", search="\x01", replace="\x02")])
    assert gfx.read_bytes() == data
    (root / "latin1.txt").write_bytes("POKéMON\n".encode("latin-1"))
    with pytest.raises(BinaryFile, match="not UTF-8"):
        apply_edits(root, [Edit(path="latin1.txt", search="POK", replace="PKMN")])


def test_crlf_files_keep_crlf(root: Path) -> None:
    path = root / "src/dos.c"
    path.write_bytes(b"int a;\r\nint b;\r\n\r\nint c;\r\n")
    applied = apply_edits(root, [
        Edit(path="src/dos.c", search="int a;\nint b;\n", replace="int a;\nint bb;\n"),  # LF search, exact
        Edit(path="src/dos.c", search="int   c;", replace="int c;\nint d;"),  # whitespace fallback
    ])
    assert [a.how for a in applied] == ["exact", "whitespace"]
    assert path.read_bytes() == b"int a;\r\nint bb;\r\n\r\nint c;\r\nint d;\r\n"


def test_rename_a_static_function_and_its_uses(decomp_repo: DecompRepo) -> None:
    main_c = decomp_repo.path / "src/main.c"
    before = main_c.read_text()
    applied = apply_edits(decomp_repo.path, [
        Edit(path="src/main.c", search="static void ReadKeys(void);", replace="static void ReadKeyInput(void);"),
        Edit(path="src/main.c", search="        ReadKeys();\n", replace="        ReadKeyInput();\n"),
        Edit(path="src/main.c", search="static void ReadKeys(void)\n{", replace="static void ReadKeyInput(void)\n{"),
    ])
    assert [(a.how, a.start_line) for a in applied] == [("exact", 9), ("exact", 30), ("exact", 82)]
    assert main_c.read_text() == before.replace("ReadKeys", "ReadKeyInput")


def test_all_or_nothing_when_a_later_edit_fails(root: Path) -> None:
    (root / "src/b.c").write_text("int b;\n")
    os.chmod(root / "src/task.c", 0o755)
    edits = [
        Edit(path="src/task.c", search="TaskDummy", replace="TaskNop"),
        Edit(path="src/created.c", search="", replace="int c;\n"),
        Edit(path="src/b.c", search="int bee;", replace="int c;"),
    ]
    with pytest.raises(EditError) as caught:
        apply_edits(root, edits)
    assert isinstance(caught.value, NoMatch)
    assert (caught.value.block, caught.value.blocks) == (3, 3)
    assert format_feedback(caught.value).startswith("Edit block 3 of 3 (src/b.c) failed")
    assert (root / "src/task.c").read_text() == TASK_C
    assert not (root / "src/created.c").exists()
    assert (root / "src/b.c").read_text() == "int b;\n"
    # The same edits, fixed, go through, and the rewritten file keeps its mode.
    apply_edits(root, [*edits[:2], Edit(path="src/b.c", search="int b;", replace="int c;")])
    assert "TaskNop" in (root / "src/task.c").read_text()
    assert stat.S_IMODE((root / "src/task.c").stat().st_mode) == 0o755
    assert (root / "src/b.c").read_text() == "int c;\n"
