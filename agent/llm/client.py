"""One client for every provider: structured calls checked against the stage's schema, retried, logged."""

from __future__ import annotations

import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import httpx
import openai
from pydantic import BaseModel, ValidationError

from agent.config import Config, RoleModels
from agent.errors import InvalidInput, InvalidModelOutput, ModelUnavailable
from agent.llm.calls import CallRecord, log_call
from agent.llm.resolve import Resolution

log = logging.getLogger("cra.llm")
T = TypeVar("T", bound=BaseModel)

_TRANSIENT = (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError)
BACKOFF_S = 0.5
ANSWER_BODY_CHARS = 4000  # of a failed answer's body, kept with the attempt
BACKOFF_CAP_S = 8.0
REPAIR_PROMPT = (
    "Your previous answer was not valid: {error}\n"
    "Answer again with only a JSON object that matches the schema, nothing else."
)


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A validated answer, the call that produced it, and the fallback taken if any."""

    value: T
    call_id: str
    model: str
    fallback_reason: str | None


class _Attempt:
    """The requests of one logical call, with the counters the log keeps."""

    def __init__(self, record: CallRecord) -> None:
        self.record = record
        self.started = time.perf_counter()

    def used(self, response: openai.types.chat.ChatCompletion, model: str) -> str:
        choice = response.choices[0]
        text = choice.message.content or ""
        rec = self.record
        rec.model_answered = response.model
        rec.raw_response = text
        if response.usage:
            rec.prompt_tokens = (rec.prompt_tokens or 0) + response.usage.prompt_tokens
            rec.completion_tokens = (rec.completion_tokens or 0) + response.usage.completion_tokens
        rec.attempts.append({"model": model, "finish_reason": choice.finish_reason, "text": text})
        return text

    def failed(self, model: str, exc: Exception) -> None:
        attempt = {"model": model, "error": f"{type(exc).__name__}: {exc}"}
        if isinstance(exc, openai.APIStatusError):  # what the server said, for `cra calls show`
            attempt |= {"status": exc.status_code, "body": exc.response.text[:ANSWER_BODY_CHARS]}
        self.record.attempts.append(attempt)


class LLM:
    """Calls the model resolved for each stage, and logs every call in the ledger."""

    def __init__(self, config: Config, resolutions: list[Resolution], *, home: str | Path | None = None,
                 run_id: str | None = None) -> None:
        self.config = config
        self.home = home
        self.run_id = run_id
        self.resolutions = {r.stage: r for r in resolutions}
        self._clients: dict[str, openai.OpenAI] = {}
        self._unavailable: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    def _secrets(self, resolution: Resolution) -> list[str]:
        name = resolution.server.api_key_env
        return [os.environ[name]] if name and os.environ.get(name) else []

    def _client(self, resolution: Resolution) -> openai.OpenAI:
        server = resolution.server
        with self._lock:
            if server.endpoint not in self._clients:
                key = os.environ.get(server.api_key_env, "") if server.api_key_env else ""
                self._clients[server.endpoint] = openai.OpenAI(
                    base_url=server.endpoint, api_key=key or "unused", timeout=self.config.models.timeout_s, max_retries=0,
                )
            return self._clients[server.endpoint]

    def ask(
        self, stage: str, messages: list[dict[str, str]], output: type[T], *,
        max_tokens: int | None = None, temperature: float = 0.0,
    ) -> Answer[T]:
        """Ask `stage`'s model for an answer of type `output`; one repair attempt, then InvalidModelOutput."""
        if stage not in self.resolutions:
            raise InvalidInput(f"unknown stage {stage!r}; stages are {', '.join(self.resolutions)}")
        resolution = self.resolutions[stage]
        schema = output.model_json_schema()
        params = {
            "max_tokens": max_tokens or self.config.models.max_tokens, "temperature": temperature,
            **({"extra_body": extra} if (extra := _generation_settings(resolution.server)) else {}),
            "response_format": {"type": "json_schema", "json_schema": {"name": output.__name__, "schema": schema, "strict": True}},
        }
        record = CallRecord(
            stage=stage, call_type="structured", provider=resolution.server.provider, endpoint=resolution.server.endpoint,
            model_requested=resolution.model, base_model=resolution.base_name, resolution=resolution.source,
            adapter=resolution.adapter.name if resolution.adapter else None, messages=list(messages),
            params={k: v for k, v in params.items() if k != "response_format"}, output_schema=schema, run_id=self.run_id,
        )
        attempt = _Attempt(record)
        try:
            value = self._answer(resolution, attempt, params, output)
            return Answer(value, record.id, record.model_answered or resolution.model, record.fallback_reason)
        except Exception as exc:
            record.error_type = type(exc).__name__
            record.error = str(exc)
            raise
        finally:
            record.latency_ms = (time.perf_counter() - attempt.started) * 1000
            log_call(self.home, record, secrets=self._secrets(resolution))

    def _answer(self, resolution: Resolution, attempt: _Attempt, params: dict, output: type[T]) -> T:
        record = attempt.record
        messages = list(record.messages)
        for repair in range(2):
            text, finish = self._complete(resolution, attempt, messages, params)
            problem = "the answer was cut off at max_tokens" if finish == "length" else None
            try:
                value = output.model_validate(json.loads(text, strict=False))  # raw control characters in strings pass
            except json.JSONDecodeError as exc:
                problem = problem or f"not valid JSON: {exc}"
            except ValidationError as exc:
                problem = problem or _short(exc)
            else:
                if problem is None:
                    record.parsed = value.model_dump(mode="json")
                    record.schema_ok = True
                    return value
            if repair:
                break
            record.repairs += 1
            messages += [{"role": "assistant", "content": text}, {"role": "user", "content": REPAIR_PROMPT.format(error=problem)}]
            record.messages = messages
        raise InvalidModelOutput(
            f"the {resolution.stage} model ({record.model_answered or resolution.model}) gave an answer that does not "
            f"match {output.__name__} even after a repair attempt: {problem}; call {record.id} has the details (`cra calls show {record.id}`)"
        )

    def _gave_up(self, resolution: Resolution, tries: int, exc: Exception) -> str:
        """Why the calls failed and what to do: a slow server that is up is not a server to start."""
        where = f"the {resolution.role} model server at {resolution.server.shown_endpoint}"
        if isinstance(exc, openai.APITimeoutError) and _answers(resolution.server.endpoint):
            return (f"{where} is up but did not answer within {self.config.models.timeout_s:g} s ({tries} tries); "
                    "raise [models] timeout_s or lower max_tokens, or look at the server's load")
        return (f"{where} failed {tries} times ({type(exc).__name__}: {exc}); start it with "
                f"`cra serve --role {resolution.role}` or fix [models.{resolution.role}] endpoint")

    def _complete(self, resolution: Resolution, attempt: _Attempt, messages: list[dict], params: dict) -> tuple[str, str]:
        """One completion with retries on transient errors and a fallback to the base if the adapter is refused."""
        record = attempt.record
        key = (resolution.server.endpoint, resolution.model)
        model = resolution.base_name if key in self._unavailable else resolution.model
        if key in self._unavailable:
            record.fallback_reason = self._unavailable[key]
        retries = 0
        while True:
            try:
                response = self._client(resolution).chat.completions.create(model=model, messages=messages, **params)
            except _TRANSIENT as exc:
                attempt.failed(model, exc)
                if retries >= self.config.models.max_retries:
                    raise ModelUnavailable(self._gave_up(resolution, retries + 1, exc)) from exc
                retries += 1
                record.retries += 1
                time.sleep(min(BACKOFF_CAP_S, BACKOFF_S * 2 ** (retries - 1)) * (0.5 + random.random() / 2))
                continue
            except (openai.NotFoundError, openai.BadRequestError) as exc:
                attempt.failed(model, exc)
                if model == resolution.base_name or not _model_refused(exc):
                    raise ModelUnavailable(f"the {resolution.role} server at {resolution.server.shown_endpoint} refused the request for {model}: {exc}") from exc
                reason = f"{model} is not available on {resolution.server.shown_endpoint} ({_first_line(exc)}); using the base {resolution.base_name}"
                log.warning("stage %s: %s", resolution.stage, reason)
                self._unavailable[key] = reason
                record.fallback_reason = reason
                model = resolution.base_name
                continue
            except openai.APIStatusError as exc:
                attempt.failed(model, exc)
                raise ModelUnavailable(f"the {resolution.role} server at {resolution.server.shown_endpoint} answered {exc.status_code}: {_first_line(exc)}") from exc
            return attempt.used(response, model), response.choices[0].finish_reason


def _generation_settings(server: RoleModels) -> dict:
    """The role's own request settings the OpenAI API has no field for (vLLM reads them from the body)."""
    settings: dict = {}
    if server.repetition_penalty is not None:
        settings["repetition_penalty"] = server.repetition_penalty
    if server.chat_template_kwargs:
        settings["chat_template_kwargs"] = server.chat_template_kwargs
    return settings


def _answers(endpoint: str) -> bool:
    """Whether a server answers at `endpoint` at all (its model list, within a few seconds)."""
    try:
        return httpx.get(f"{endpoint.rstrip('/')}/models", timeout=3.0).status_code < 500
    except httpx.HTTPError:
        return False


def _model_refused(exc: openai.APIStatusError) -> bool:
    """Whether the server refused the model itself (unknown name, adapter that failed to load)."""
    text = str(exc).lower()
    return exc.status_code == 404 or any(word in text for word in ("lora", "adapter", "does not exist"))


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _short(exc: ValidationError) -> str:
    """A validation error in a few lines, as a model (and a person) can act on it."""
    problems = [f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors()[:5]]
    return "; ".join(problems) + (f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else "")

