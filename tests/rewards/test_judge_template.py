"""The judge prompt goes through the judge tokenizer's own chat template, as given: a
template that refuses the system + user prompt is one ConfigError naming the
tokenizer (it used to be caught by `except Exception` and the prompt silently
rewritten with the rubric folded into the user turn), any other error is not
swallowed, and a tokenizer without a template is refused instead of given ChatML."""

from __future__ import annotations

import pytest

from kardia_jax.data.template import CHAT_TEMPLATE
from kardia_jax.data.tokenizer import load_tokenizer
from kardia_jax.errors import ConfigError
from kardia_jax.rewards import PromptBuilder

from .helpers import TEST_RUBRIC

NO_SYSTEM_ROLE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- raise_exception('System role not supported') }}{%- endif %}" + CHAT_TEMPLATE
)
# fails only when a system turn is present, with an error that is no TemplateError
BROKEN_ON_SYSTEM = (
    "{%- if messages[0]['role'] == 'system' %}{{- 1 + 'a' }}{%- endif %}" + CHAT_TEMPLATE
)


def judge_tokenizer(template):
    tok = load_tokenizer()  # a fresh copy: the template is set on this one only
    tok.chat_template = template
    return tok


def test_a_template_error_is_one_config_error_not_a_rewritten_prompt():
    tok = judge_tokenizer(NO_SYSTEM_ROLE)
    with pytest.raises(ConfigError, match="System role not supported") as err:
        PromptBuilder(tok, TEST_RUBRIC)
    message = str(err.value)
    assert message.startswith(f"{tok.name_or_path}: the judge's chat template") and (
        "\n" not in message
    )


def test_other_errors_in_the_template_are_not_swallowed():
    with pytest.raises(TypeError):
        PromptBuilder(judge_tokenizer(BROKEN_ON_SYSTEM), TEST_RUBRIC)


def test_a_judge_tokenizer_without_a_template_is_refused_naming_its_folder():
    tok = judge_tokenizer(None)
    with pytest.raises(ConfigError, match="has no chat template") as err:
        PromptBuilder(tok, TEST_RUBRIC)
    assert str(err.value).startswith(f"{tok.name_or_path}: ") and "\n" not in str(err.value)
