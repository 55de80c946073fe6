"""The Qwen2.5 chat template (`<|im_start|>role\\n...<|im_end|>\\n`), as a jinja string
for the tokenizer and as the equivalent Python that the example builder uses.

Tool calls are left out: KardiaBench has none. Without a system message, Qwen2.5's
default one is inserted, as in Qwen's own template.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def render_turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Same text as `tokenizer.apply_chat_template(messages, tokenize=False, ...)`."""
    out = []
    if not messages or messages[0]["role"] != "system":
        out.append(render_turn("system", DEFAULT_SYSTEM))
    out.extend(render_turn(m["role"], m["content"]) for m in messages)
    if add_generation_prompt:
        out.append(f"{IM_START}assistant\n")
    return "".join(out)
