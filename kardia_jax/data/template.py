"""Chat templates: every model family is rendered with its own template, the one its
tokenizer carries (tokenizer_config.json's `chat_template` or chat_template.jinja),
through `apply_chat_template`. Our built Qwen2.5 tokenizer carries Qwen's template,
kept here as a jinja string (CHAT_TEMPLATE) with its Python twin `render_chat`.

The Qwen template leaves tool calls out: KardiaBench has none. Without a system
message, Qwen2.5's default one is inserted, as in Qwen's own template.
"""

from __future__ import annotations

from collections.abc import Sequence

from kardia_jax.errors import ConfigError

DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Document-end tokens of the families we know: a completion that reaches one has ended
# even where the chat template closes turns with another token (Qwen's <|endoftext|>
# after <|im_end|>). Used only where the tokenizer has them as special tokens.
TEXT_END_TOKENS = ("<|endoftext|>", "<|end_of_text|>", "<eos>", "</s>")
_PROBE = "Kardia probe reply."


def render_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Same text as `tokenizer.apply_chat_template(messages, tokenize=False, ...)` with
    CHAT_TEMPLATE (the Qwen2.5 format only; other families go through `render`)."""
    out = []
    if not messages or messages[0]["role"] != "system":
        out.append(render_turn("system", DEFAULT_SYSTEM))
    out.extend(render_turn(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)


def tokenizer_name(tokenizer) -> str:
    """The folder the tokenizer was read from (or its class), for error messages."""
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def require_chat_template(tokenizer, what: str = "tokenizer") -> str:
    """The tokenizer's chat template; none is a one-line ConfigError naming its folder
    (a silent ChatML fallback would train or prompt a non-Qwen model in Qwen's format)."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(
            f"{tokenizer_name(tokenizer)}: the {what} has no chat template (set "
            "'chat_template' in tokenizer_config.json or add chat_template.jinja)"
        )
    return template


class ChatTemplateError(ConfigError):
    """The chat template refused the conversation: jinja2's TemplateError, from the
    template's own raise_exception (Gemma 2: "System role not supported") or a broken
    template. `reason` is jinja's message on one line."""

    def __init__(self, tokenizer, reason: str):
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{chat_template_name(tokenizer)} cannot render this chat: {self.reason}")


def chat_template_name(tokenizer) -> str:
    return f"the chat template of {tokenizer_name(tokenizer)}"


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False, **kw) -> str:
    """The conversation as the tokenizer's own chat template writes it. Our Qwen
    template is rendered by its Python twin: the same text (tests check it), without
    jinja's cost per call, which matters when every prefix of a dialogue is rendered."""
    if require_chat_template(tokenizer) == CHAT_TEMPLATE and not kw:
        return render_chat(messages, add_generation_prompt)
    from jinja2 import TemplateError  # only here: the Python twin above needs no jinja

    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kw,
        )
    except TemplateError as e:
        raise ChatTemplateError(tokenizer, str(e)) from None


def _special_ids(tokenizer) -> set[int]:
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return set(added) | set(tokenizer.all_special_ids)


def end_of_turn_tokens(tokenizer) -> tuple[str, ...]:
    """The special token the chat template writes right after an assistant message
    (Qwen's <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>), found by
    rendering a probe exchange; () when the template writes none, or when the
    tokenizer has no template."""
    if not getattr(tokenizer, "chat_template", None):
        return ()
    messages = [{"role": "user", "content": "Hello."}, {"role": "assistant", "content": _PROBE}]
    text = render(tokenizer, messages)
    at = text.rfind(_PROBE)
    if at < 0:
        return ()
    ids = tokenizer(text[at + len(_PROBE) :].lstrip(), add_special_tokens=False)["input_ids"]
    if ids and ids[0] in _special_ids(tokenizer):
        return (tokenizer.convert_ids_to_tokens(ids[0]),)
    return ()


def chat_stop_tokens(tokenizer) -> tuple[str, ...]:
    """Tokens that end a reply: the template's end of turn, the tokenizer's eos, and
    the known document-end tokens the tokenizer has as special tokens."""
    special = {tokenizer.convert_ids_to_tokens(i) for i in _special_ids(tokenizer)}
    eos = [tokenizer.eos_token] if tokenizer.eos_token else []
    ends = [t for t in TEXT_END_TOKENS if t in special]
    return tuple(dict.fromkeys([*end_of_turn_tokens(tokenizer), *eos, *ends]))


def chat_stop_ids(tokenizer) -> tuple[int, ...]:
    """`chat_stop_tokens` as ids, in the same order."""
    ids = (tokenizer.convert_tokens_to_ids(t) for t in chat_stop_tokens(tokenizer))
    unk = tokenizer.unk_token_id
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int) and i >= 0 and i != unk))
