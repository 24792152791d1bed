"""Code-aware tokenization for BM25."""

from agent.index.tokens import code_tokens, token_text


def test_identifiers_split_on_case_digits_and_underscores() -> None:
    assert code_tokens("CB2_InitWallClock") == ["cb2", "cb", "init", "wall", "clock", "cb2_initwallclock"]
    assert code_tokens("gSaveBlock1Ptr") == ["save", "block1", "block", "ptr", "gsaveblock1ptr"]
    assert code_tokens("parseJSONValue") == ["parse", "json", "value", "parsejsonvalue"]
    assert code_tokens("MOVE_TACKLE") == ["move", "tackle", "move_tackle"]


def test_short_tokens_stopwords_and_numbers() -> None:
    assert code_tokens("if (x) return the 0x4000 + 7;") == ["0x4000"]
    assert code_tokens("static void Foo(u8 a)") == ["foo", "u8"]


def test_query_and_document_tokenize_alike() -> None:
    doc = token_text("void CB2_InitWallClock(void)")
    assert set(token_text("wall clock").split()) <= set(doc.split())
    assert token_text("") == ""
