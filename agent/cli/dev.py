"""`cra dev`: developer tools."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from agent.cli.common import one_line_errors, out

dev_app = typer.Typer(help="Developer tools.", no_args_is_help=True)


@dev_app.command("tiny-model")
@one_line_errors
def dev_tiny_model(
    folder: Annotated[Path, typer.Argument(help="A new, empty folder.")],
    vocab_size: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 2048,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Build a tiny Qwen3-architecture model and a ChatML tokenizer, offline, for tests and demos."""
    from agent.llm.tiny import build_tiny_model

    build_tiny_model(folder, vocab_size=vocab_size, seed=seed)
    out.print(f"tiny model written to {escape(str(folder))}")
