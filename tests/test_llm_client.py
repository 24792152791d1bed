"""The model client's logic against a scripted stand-in server: retries, repair, fallback, logging, secrets.

These are unit tests of the client; tests/test_vllm_serving.py is the proof against a real vLLM server.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from agent.config import ledger_path, load_config
from agent.errors import InvalidModelOutput, ModelUnavailable
from agent.llm import client as client_module
from agent.llm.calls import REDACTED, get_call, list_calls
from agent.llm.client import LLM
from agent.llm.resolve import resolve_all
from agent.stages import STAGE_ROLES
from tests.fixtures.models import chat_reply, error_reply, standin_server


class Scope(BaseModel):
    """What the tests ask for."""

    files: list[str] = Field(max_length=3)
    confidence: Literal["low", "high"]


GOOD = '{"files": ["src/main.c"], "confidence": "high"}'
ASK = [{"role": "user", "content": "Which files implement the main loop?"}]


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "BACKOFF_S", 0.0)


def llm_for(tmp_path: Path, url: str, extra: str = "", **kwargs) -> LLM:
    (tmp_path / "cra.toml").write_text(f"""
[models]
max_retries = 2
[models.reasoning]
base = "tiny"
endpoint = "{url}"
api_key_env = "CRA_TEST_KEY"
{extra}
""")
    config = load_config(tmp_path)
    return LLM(config, resolve_all(config, None, STAGE_ROLES), run_id="run-1", **kwargs)


def test_valid_answer_is_parsed_logged_and_schema_sent(tmp_path: Path) -> None:
    with standin_server([chat_reply(GOOD)]) as server:
        answer = llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
    assert answer.value == Scope(files=["src/main.c"], confidence="high")
    sent = server.requests[0]
    assert sent["model"] == "tiny"
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"] == Scope.model_json_schema()
    record = get_call(None, answer.call_id)
    assert (record.stage, record.run_id, record.schema_ok, record.repairs, record.retries) == ("scope", "run-1", True, 0, 0)
    assert record.parsed == {"files": ["src/main.c"], "confidence": "high"}
    assert (record.prompt_tokens, record.completion_tokens) == (11, 7)
    assert record.messages == ASK and record.raw_response == GOOD


def test_transient_errors_are_retried_with_counts(tmp_path: Path) -> None:
    with standin_server([error_reply(503, "overloaded"), error_reply(500, "boom"), chat_reply(GOOD)]) as server:
        answer = llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
    record = get_call(None, answer.call_id)
    assert record.retries == 2 and record.schema_ok
    assert [a.get("error", "ok")[:19] for a in record.attempts] == ["InternalServerError", "InternalServerError", "ok"]


def test_retries_are_bounded_then_a_clear_error(tmp_path: Path) -> None:
    with standin_server([error_reply(500, "boom")] * 5) as server:
        with pytest.raises(ModelUnavailable, match=f"at {server.url} failed 3 times"):
            llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
        assert len(server.requests) == 3
    (record,) = list_calls(None)
    assert record.error_type == "ModelUnavailable" and not record.schema_ok


def test_unreachable_server_names_the_endpoint(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ModelUnavailable) as info:
        llm_for(tmp_path, url).ask("plan", ASK, Scope)
    assert url in str(info.value) and "cra serve --role reasoning" in str(info.value)
    assert list_calls(None, failed=True)[0].retries == 2


def test_malformed_json_gets_one_repair_carrying_the_error(tmp_path: Path) -> None:
    with standin_server([chat_reply('{"files": ["a.c"], "confidence": "medium"}'), chat_reply(GOOD)]) as server:
        answer = llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
    repair_turn = server.requests[1]["messages"][-1]["content"]
    assert "confidence" in repair_turn and "'low' or 'high'" in repair_turn
    record = get_call(None, answer.call_id)
    assert record.repairs == 1 and record.schema_ok and len(record.messages) == 3


def test_truncated_twice_is_a_typed_error_and_logged(tmp_path: Path) -> None:
    cut = chat_reply('{"files": ["src/ma', finish="length")
    with standin_server([cut, cut]) as server:
        with pytest.raises(InvalidModelOutput, match="cut off at max_tokens") as info:
            llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
    (record,) = list_calls(None)
    assert record.id in str(info.value)
    assert (record.schema_ok, record.repairs, record.error_type) == (False, 1, "InvalidModelOutput")
    assert record.raw_response == '{"files": ["src/ma'


def test_unknown_adapter_falls_back_to_the_base_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    replies = [error_reply(404, "The model `scope-r9` does not exist."), chat_reply(GOOD), chat_reply(GOOD)]
    with standin_server(replies) as server:
        llm = llm_for(tmp_path, server.url, "[models.overrides]\nscope = \"scope-r9\"\n")
        first = llm.ask("scope", ASK, Scope)
        second = llm.ask("scope", ASK, Scope)
    assert [r["model"] for r in server.requests] == ["scope-r9", "tiny", "tiny"]  # the refusal is remembered
    assert first.fallback_reason and "scope-r9 is not available" in first.fallback_reason
    assert second.fallback_reason == first.fallback_reason
    record = get_call(None, first.call_id)
    assert (record.model_requested, record.model_answered, record.schema_ok) == ("scope-r9", "tiny", True)
    assert "scope-r9 is not available" in caplog.text


def test_secrets_never_reach_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("CRA_TEST_KEY", secret)
    leaky = [{"role": "user", "content": f"my key is {secret}; header Authorization: Bearer {secret}"}]
    with standin_server([chat_reply(GOOD)]) as server:
        answer = llm_for(tmp_path, server.url).ask("scope", leaky, Scope)
    assert {k.lower(): v for k, v in server.headers[0].items()}["authorization"] == f"Bearer {secret}"  # it was sent...
    record = get_call(None, answer.call_id)  # ...but stored nowhere
    assert secret not in repr(vars(record)) and REDACTED in record.messages[0]["content"]
    assert secret.encode() not in ledger_path().read_bytes()


def test_credentials_in_an_endpoint_are_never_stored_or_printed(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agent.cli import app

    with standin_server([chat_reply(GOOD)]) as server:
        url = server.url.replace("http://", "http://cra-user:s3cret-pass@")
        answer = llm_for(tmp_path, url).ask("scope", ASK, Scope)
        assert server.headers[0].get("Authorization", "").startswith("Basic ")  # the credentials are still used
    record = get_call(None, answer.call_id)
    assert "s3cret" not in record.endpoint and record.endpoint.startswith("http://***@127.0.0.1:")
    import duckdb

    con = duckdb.connect(str(ledger_path()), read_only=True)
    stored = " ".join(str(v) for row in con.execute("SELECT * FROM llm_calls").fetchall() for v in row)
    con.close()
    assert "s3cret" not in stored
    runner = CliRunner()
    for args in (["calls"], ["calls", "show", answer.call_id], ["models", "--repo", str(tmp_path)],
                 ["models", "--repo", str(tmp_path), "--json"]):
        shown = runner.invoke(app, args)
        assert shown.exit_code == 0 and "s3cret" not in shown.output and "cra-user" not in shown.output, shown.output
    (tmp_path / "cra.toml").write_text('[models]\nmax_retries = 0\n[models.reasoning]\nbase = "tiny"\n'
                                       'endpoint = "http://cra-user:s3cret-pass@127.0.0.1:9/v1"\n')
    with pytest.raises(ModelUnavailable) as failed:
        config = load_config(tmp_path)
        LLM(config, resolve_all(config, None, STAGE_ROLES)).ask("scope", ASK, Scope)
    assert "s3cret" not in str(failed.value)


@pytest.mark.parametrize("endpoint", ["not a url", "ftp://127.0.0.1/v1", "http:///v1"])
def test_an_endpoint_that_is_not_an_http_url_is_refused_when_the_config_loads(tmp_path: Path, endpoint: str) -> None:
    from agent.errors import ConfigError

    (tmp_path / "cra.toml").write_text(f'[models.reasoning]\nbase = "tiny"\nendpoint = "{endpoint}"\n')
    with pytest.raises(ConfigError, match=r"models\.reasoning\.endpoint: .*is not an http\(s\) URL"):
        load_config(tmp_path)


def test_a_timeout_from_a_server_that_is_up_does_not_say_to_start_it(tmp_path: Path) -> None:
    import time

    def slow(body: dict) -> tuple[int, dict]:
        time.sleep(2)
        return chat_reply(GOOD)

    with standin_server(slow) as server:
        llm = llm_for(tmp_path, server.url, extra="", )
        llm.config.models.timeout_s = 0.5
        llm.config.models.max_retries = 0
        with pytest.raises(ModelUnavailable) as failed:
            llm.ask("scope", ASK, Scope)
    assert "is up but did not answer within 0.5 s" in str(failed.value) and "cra serve" not in str(failed.value)


def test_calls_show_prints_what_a_failing_server_answered(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agent.cli import app

    with standin_server([error_reply(500, "CUDA out of memory in the sampler")] * 3) as server:
        with pytest.raises(ModelUnavailable):
            llm_for(tmp_path, server.url).ask("scope", ASK, Scope)
    (call,) = list_calls(None)
    shown = CliRunner().invoke(app, ["calls", "show", call.id])
    text = " ".join(shown.output.split())
    assert shown.exit_code == 0 and "failed attempts" in text
    assert text.count("answered 500:") == 3 and "CUDA out of memory in the sampler" in text


def test_a_roles_generation_settings_go_with_every_request_and_into_the_log(tmp_path: Path) -> None:
    # A base model loops without a repetition penalty; Qwen3 answers JSON with its thinking off
    extra = 'repetition_penalty = 1.3\nchat_template_kwargs = { enable_thinking = false }'
    with standin_server([chat_reply(GOOD)]) as server:
        answer = llm_for(tmp_path, server.url, extra).ask("scope", ASK, Scope)
    sent = server.requests[0]
    assert sent["repetition_penalty"] == 1.3 and sent["chat_template_kwargs"] == {"enable_thinking": False}
    assert get_call(None, answer.call_id).params["extra_body"]["repetition_penalty"] == 1.3
    (tmp_path / "plain").mkdir()
    with standin_server([chat_reply(GOOD)]) as server:
        llm_for(tmp_path / "plain", server.url).ask("scope", ASK, Scope)
    assert "repetition_penalty" not in server.requests[0] and "chat_template_kwargs" not in server.requests[0]
