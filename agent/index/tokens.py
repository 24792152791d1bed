"""Code-aware tokenization for BM25: identifiers split into their words, the same for queries and documents."""

from __future__ import annotations

import re
from functools import lru_cache

MIN_TOKEN_CHARS = 2
IDENTIFIER_CACHE_SIZE = 1 << 18

# Words too common in C source or English prose to tell documents apart.
STOPWORDS = frozenset(
    """
    an and are as at be by do for from if in is it of on or the this that to with
    auto break case char const continue default double else extern float goto inline int long register
    return short signed sizeof static switch unsigned void volatile while
    """.split()
)

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9][A-Za-z0-9_]*")
# One word inside an identifier: "HTTPServer2" -> HTTP, Server2; "CB2" -> CB2; "initWall" -> init, Wall.
_PART = re.compile(r"[A-Z]+[0-9]*(?=[A-Z][a-z])|[A-Z]?[a-z]+[0-9]*|[A-Z]+[0-9]*|[0-9]+")
_TRAILING_DIGITS = re.compile(r"[0-9]+$")


@lru_cache(maxsize=IDENTIFIER_CACHE_SIZE)
def _split(word: str) -> tuple[str, ...]:
    """The tokens of one identifier: its lowercased words (with and without trailing digits), then the whole."""
    if word[0].isdigit():
        number = word.lower()
        return (number,) if len(number) >= MIN_TOKEN_CHARS else ()
    out: list[str] = []
    for chunk in word.split("_"):
        for part in _PART.findall(chunk):
            part = part.lower()
            out.append(part)
            bare = _TRAILING_DIGITS.sub("", part)
            if bare and bare != part:
                out.append(bare)
    whole = word.lower().strip("_")
    if len(out) > 1 and whole not in out:
        out.append(whole)
    return tuple(t for t in out if len(t) >= MIN_TOKEN_CHARS and t not in STOPWORDS)


def code_tokens(text: str) -> list[str]:
    """Split `text` into lowercased code tokens: identifier words, whole identifiers and numbers."""
    tokens: list[str] = []
    for word in _WORD.findall(text):
        tokens.extend(_split(word))
    return tokens


def token_text(text: str) -> str:
    """The tokens of `text` joined by spaces: the content of a whitespace-tokenized full-text column."""
    return " ".join(code_tokens(text))
