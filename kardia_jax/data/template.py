"""Chat templates: every model family is rendered with its own template, the one its
tokenizer carries (tokenizer_config.json's `chat_template` or chat_template.jinja),
through `apply_chat_template`. Two templates are kept here as jinja strings with a
Python twin each (same text, without jinja's cost per call): Qwen2.5's (CHAT_TEMPLATE,
which our built Qwen2.5 tokenizer carries) and Gemma 3's (GEMMA3_CHAT_TEMPLATE, which
a Gemma 3 GGUF import carries when the file has none).

The Qwen template leaves tool calls out: KardiaBench has none. Without a system
message, Qwen2.5's default one is inserted, as in Qwen's own template. Gemma has no
system role: Gemma 3's template opens the first user turn with the system text and a
blank line, and names the assistant "model". Gemma 1 and 2's published template
(GEMMA_CHAT_TEMPLATE) refuses a system message instead; a tokenizer carrying it is
rendered with Gemma 3's (`chat_template`), the same text for every chat it accepts.
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

# Gemma 3's chat template, character for character as Google's tokenizer_config.json
# for the Gemma 3 models has it (llama.cpp's and onnxruntime-extensions' test suites
# carry the same string): images as <start_of_image>, the system text folded into the
# first user turn, roles alternating user / model, every content trimmed.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    '    {%- set first_user_prefix = "" -%}\n'
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    '        {{ raise_exception("Conversation roles must alternate '
    'user/assistant/user/assistant/...") }}\n'
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    '        {%- set role = "model" -%}\n'
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    '        {{ raise_exception("Invalid content type") }}\n'
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)
GEMMA_ROLES = {"user": "user", "assistant": "model"}

# Gemma 1 and 2's chat template, character for character as the instruct checkpoints'
# tokenizer_config.json has it (gemma-2b-it, gemma-7b-it and the Gemma 2 -it models
# carry this one string). It refuses a system message, but the paper's Gemma-2B/7B
# runs train on dialogues that open with one (the persona prompt), so a tokenizer
# carrying it is rendered with Gemma 3's template: the system text folded into the
# first user turn, and otherwise the same text (tests check both).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)


def template_key(template: str) -> str:
    """A template as FAMILY_TEMPLATES looks it up: outer whitespace cut, and a newline
    written as jinja's escape read as the newline it renders."""
    return template.strip().replace("\\n", "\n")


# A family's published template -> the one its chats are rendered with.
FAMILY_TEMPLATES = {template_key(GEMMA_CHAT_TEMPLATE): GEMMA3_CHAT_TEMPLATE}

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


def render_gemma3_chat(
    messages: Sequence[dict], add_generation_prompt: bool = False, bos: str = "<bos>"
) -> str | None:
    """Same text as `apply_chat_template` with GEMMA3_CHAT_TEMPLATE for chats of string
    contents whose turns alternate user / assistant after an optional system message;
    None for anything else (images, other roles), which the template itself renders
    or refuses."""
    prefix, turns = "", list(messages)
    if turns and turns[0]["role"] == "system":
        if not isinstance(turns[0]["content"], str):
            return None
        prefix, turns = turns[0]["content"] + "\n\n", turns[1:]
    out = [bos]
    for i, m in enumerate(turns):
        if m["role"] != ("user" if i % 2 == 0 else "assistant") or not isinstance(
            m["content"], str
        ):
            return None
        head = prefix if i == 0 else ""
        out.append(f"<start_of_turn>{GEMMA_ROLES[m['role']]}\n{head}{m['content'].strip()}")
        out.append("<end_of_turn>\n")
    if add_generation_prompt:
        out.append("<start_of_turn>model\n")
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


def chat_template(tokenizer) -> str:
    """The template the tokenizer's chats are rendered with: its own, except a
    family's published one that FAMILY_TEMPLATES replaces (Gemma 1 and 2's by Gemma
    3's), so the user never names a template; none is an error (`require_chat_template`)."""
    template = require_chat_template(tokenizer)
    return FAMILY_TEMPLATES.get(template_key(template), template)


class ChatTemplateError(ConfigError):
    """The chat template refused the conversation: jinja2's TemplateError, from the
    template's own raise_exception (a template without a system role: "System role
    not supported") or a broken template. `reason` is jinja's message on one line."""

    def __init__(self, tokenizer, reason: str):
        self.reason = " ".join(str(reason).split())
        super().__init__(f"{chat_template_name(tokenizer)} cannot render this chat: {self.reason}")


def chat_template_name(tokenizer) -> str:
    return f"the chat template of {tokenizer_name(tokenizer)}"


def render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool = False, **kw) -> str:
    """The conversation as the tokenizer's chat template writes it (`chat_template`:
    its own, or its family's). Our Qwen and Gemma 3 templates are rendered by their
    Python twins: the same text (tests check it), without jinja's cost per call, which
    matters when every prefix of a dialogue is rendered."""
    template = chat_template(tokenizer)
    if template == CHAT_TEMPLATE and not kw:
        return render_chat(messages, add_generation_prompt)
    if template == GEMMA3_CHAT_TEMPLATE and not kw and tokenizer.bos_token:
        text = render_gemma3_chat(messages, add_generation_prompt, tokenizer.bos_token)
        if text is not None:
            return text
    from jinja2 import TemplateError  # only here: the Python twin above needs no jinja

    try:
        return tokenizer.apply_chat_template(
            [dict(m) for m in messages],
            chat_template=template,
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
