"""How a base model reads a conversation: its chat template, end-of-turn token and stop tokens, from its own files.

Training, serving and evaluation use the one format derived here, so an adapter is trained on exactly the prompt
text the server builds. The base's own template is used when it marks the assistant's answers with
`{% generation %}` (TRL trains on those tokens only); otherwise cra supplies the template of the turn tokens the
tokenizer has (ChatML, as Qwen's models; Gemma's turns), and the server is given that template too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError

GENERATION_MARK = "{% generation %}"

# ChatML (Qwen2.5, Qwen3, the tiny test model). A tokenizer with Qwen3's `<think>` gets its empty thinking block
# before every answer unless `enable_thinking` is passed true: the JSON stages answer without thinking.
CHATML = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + THINK }}{% generation %}{{- message['content'] + '<|im_end|>' }}"
    "{% endgeneration %}{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' + THINK }}{%- endif %}"
)
_NO_THINKING = "{%- set THINK = '' if enable_thinking is defined and enable_thinking else '<think>\\n\\n</think>\\n\\n' %}"

# Gemma: user and model turns only, the system prompt opening the first user turn, `<bos>` first.
GEMMA = (
    "{{- bos_token }}"
    "{%- set system = messages[0]['content'] + '\\n\\n' if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- for message in messages if message['role'] != 'system' %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<start_of_turn>model\\n' }}{% generation %}{{- message['content'] + '<end_of_turn>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<start_of_turn>user\\n' + (system if loop.first else '') + message['content'] + '<end_of_turn>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    """A base's conversation format: the template (with generation marks), where an answer ends, where to stop."""

    name: str  # "own" (the base's template), "chatml", "chatml+think" or "gemma" (supplied by cra)
    template: str
    end_token: str
    stop_tokens: tuple[str, ...]

    @property
    def supplied(self) -> bool:
        """Whether cra supplies the template (the server must be given it)."""
        return self.name != "own"


def chatml_template(thinking_tokens: bool) -> str:
    """cra's ChatML template; with Qwen3's thinking tokens, the empty thinking block before each answer."""
    return (_NO_THINKING if thinking_tokens else "{%- set THINK = '' %}") + CHATML


def chat_format(folder: Path, name: str | None = None) -> ChatFormat:
    """The chat format of the base in `folder` (its tokenizer files and generation config)."""
    shown = name or str(folder)
    added = _added_tokens(folder)
    tokens = set(added.values())
    own = _own_template(folder)
    stops = _eos_tokens(folder, added)
    if own and GENERATION_MARK in own:
        end = next((t for t in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>") if t in tokens and t in own), None)
        end = end or _tokenizer_config(folder).get("eos_token")
        if isinstance(end, dict):
            end = end.get("content")
        if not end:
            raise ConfigError(f"{shown}: its chat template marks answers but its tokenizer names no end-of-turn "
                              "token; set eos_token in its tokenizer_config.json")
        return ChatFormat("own", own, end, tuple(dict.fromkeys([end, *stops])))
    if {"<|im_start|>", "<|im_end|>"} <= tokens:
        think = {"<think>", "</think>"} <= tokens
        return ChatFormat("chatml+think" if think else "chatml", chatml_template(think), "<|im_end|>",
                          tuple(dict.fromkeys(["<|im_end|>", *stops])))
    if {"<start_of_turn>", "<end_of_turn>"} <= tokens:
        return ChatFormat("gemma", GEMMA, "<end_of_turn>", tuple(dict.fromkeys(["<end_of_turn>", *stops])))
    raise ConfigError(f"{shown}: cra cannot tell how this base reads a conversation: its chat template has no "
                      f"{GENERATION_MARK} marks and its tokenizer has neither ChatML's nor Gemma's turn tokens; "
                      "give it a chat template that marks the assistant's answers with {% generation %}")


def _tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _own_template(folder: Path) -> str | None:
    """The base's chat template: chat_template.jinja, else tokenizer_config.json's (the default of a list)."""
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = _tokenizer_config(folder).get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _added_tokens(folder: Path) -> dict[int, str]:
    """The tokenizer's added (special) tokens by id, from tokenizer_config.json and tokenizer.json."""
    found = {int(k): v.get("content") for k, v in _tokenizer_config(folder).get("added_tokens_decoder", {}).items()}
    if (folder / "tokenizer.json").is_file():
        found |= {t["id"]: t["content"] for t in json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
                  .get("added_tokens", [])}
    return {i: t for i, t in found.items() if t}


def _eos_tokens(folder: Path, added: dict[int, str]) -> list[str]:
    """The end-of-sequence tokens of the base's generation config, by text, where the tokenizer names them."""
    path = folder / "generation_config.json"
    ids = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id") if path.is_file() else None
    return [added[i] for i in ([ids] if isinstance(ids, int) else ids or []) if i in added]
