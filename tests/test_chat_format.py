"""The chat format cra derives from a base's tokenizer files, for Qwen3, Qwen2.5-Coder and Gemma 3 (no weights).

The tokenizers are built here, small, with each family's special tokens, its generation config's end tokens and,
for the Qwen models, a template of their own without `{% generation %}` marks, as those bases ship."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.llm.chat import GEMMA, chat_format, chatml_template

# A template as a Qwen chat model ships one: ChatML without marks for the assistant's answers.
QWEN_OWN = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
FAMILIES = {
    # name: (special tokens, end tokens of the generation config, the base's own template)
    "Qwen3-4B": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
                 ["<|im_end|>", "<|endoftext|>"], QWEN_OWN),
    "Qwen2.5-Coder-3B-Instruct": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  ["<|im_end|>", "<|endoftext|>"], QWEN_OWN),
    "gemma-3-270m": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
                     ["<eos>", "<end_of_turn>"], None),  # the pretrained base ships no template
}
CHAT = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "Which file?"},
        {"role": "assistant", "content": '{"files": ["src/main.c"]}'}]


def tokenizer_folder(folder: Path, specials: list[str], ends: list[str], template: str | None) -> Path:
    """Small tokenizer files with a family's special tokens, its end tokens and (maybe) its template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator([json.dumps(CHAT)] * 3, trainer=trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    bos = "<bos>" if "<bos>" in specials else None
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=ends[0], bos_token=bos,
                                        pad_token=specials[0], chat_template=template)
    tokenizer.save_pretrained(folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": [tokenizer.convert_tokens_to_ids(t) for t in ends]}))
    return folder


@pytest.mark.parametrize(("family", "name", "end", "prompt_end"), [
    ("Qwen3-4B", "chatml+think", "<|im_end|>", "<|im_start|>assistant\n<think>\n\n</think>\n\n"),
    ("Qwen2.5-Coder-3B-Instruct", "chatml", "<|im_end|>", "<|im_start|>assistant\n"),
    ("gemma-3-270m", "gemma", "<end_of_turn>", "<start_of_turn>model\n"),
])
def test_the_template_and_end_of_turn_cra_derives_for_each_family(tmp_path: Path, family: str, name: str,
                                                                  end: str, prompt_end: str) -> None:
    from transformers import AutoTokenizer

    specials, ends, own = FAMILIES[family]
    folder = tokenizer_folder(tmp_path / family, specials, ends, own)
    chat = chat_format(folder, family)
    assert (chat.name, chat.end_token, chat.supplied) == (name, end, True)
    assert set(chat.stop_tokens) == set(ends) and chat.stop_tokens[0] == end
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompt = tokenizer.apply_chat_template(CHAT[:2], chat_template=chat.template, tokenize=False,
                                           add_generation_prompt=True)
    assert prompt.endswith(prompt_end) and "Answer in JSON." in prompt
    # The answer and its end of turn, and nothing else, are what training learns
    encoded = tokenizer.apply_chat_template(CHAT, chat_template=chat.template, return_dict=True,
                                            return_assistant_tokens_mask=True)
    learned = [t for t, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(learned) == CHAT[-1]["content"] + end
    # The served prompt is the trained one: the prompt is the start of the whole conversation's text
    whole = tokenizer.apply_chat_template(CHAT, chat_template=chat.template, tokenize=False)
    assert whole.startswith(prompt)


def test_gemma_puts_the_system_prompt_in_the_first_user_turn_after_bos(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = tokenizer_folder(tmp_path, *FAMILIES["gemma-3-270m"])
    text = AutoTokenizer.from_pretrained(folder).apply_chat_template(CHAT, chat_template=GEMMA, tokenize=False)
    assert text == ('<bos><start_of_turn>user\nAnswer in JSON.\n\nWhich file?<end_of_turn>\n'
                    '<start_of_turn>model\n{"files": ["src/main.c"]}<end_of_turn>\n')


def test_qwen3s_thinking_stays_off_unless_asked_for(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(tmp_path, *FAMILIES["Qwen3-4B"]))
    on = tokenizer.apply_chat_template(CHAT[:2], chat_template=chatml_template(True), tokenize=False,
                                       add_generation_prompt=True, enable_thinking=True)
    assert on.endswith("<|im_start|>assistant\n")


def test_a_base_whose_template_marks_answers_keeps_its_own(tmp_path: Path) -> None:
    specials, ends, _ = FAMILIES["Qwen2.5-Coder-3B-Instruct"]
    folder = tokenizer_folder(tmp_path, specials, ends, chatml_template(False))
    chat = chat_format(folder)
    assert (chat.name, chat.supplied, chat.end_token) == ("own", False, "<|im_end|>")


def test_a_base_with_no_known_turns_is_refused_with_what_to_do(tmp_path: Path) -> None:
    folder = tokenizer_folder(tmp_path, ["<s>", "</s>"], ["</s>"], "{{ messages[0]['content'] }}")
    with pytest.raises(ConfigError, match="cannot tell how this base reads a conversation.*generation"):
        chat_format(folder, "odd-base")
