"""The format and emotion rewards, table-driven: each row is a completion a policy
could write, with the reward (and, for format, the reason and partial credit) it
must get."""

import numpy as np
import pytest

from kardia_jax.errors import DataError
from kardia_jax.rewards import emotion_reward, format_reasons, format_reward, predicted_emotions

U = "<|understanding_begin|>She feels left out.<|understanding_end|>"
R = "<|reasoning_begin|>Friends forgot her birthday.<|reasoning_end|>"
E = "<|emotion_begin|>sad<|emotion_end|>"
S = "<|response_begin|>That sounds painful. Want to talk about it?<|response_end|>"
VALID = "\n".join([U, R, E, S])
TAGS = (
    "<understanding>She feels left out.</understanding>\n<reasoning>Forgotten.</reasoning>\n"
    "<emotion>sad</emotion>\n<response>That sounds painful.</response>"
)


def answer(emotion: str) -> str:
    return "\n".join([U, R, f"<|emotion_begin|>{emotion}<|emotion_end|>", S])


# (id, completion, reward, reason, partial credit)
FORMAT_CASES = [
    ("valid_special", VALID, 1.0, None, 1.0),
    ("valid_tags", TAGS, 1.0, None, 1.0),
    ("valid_no_separator", U + R + E + S, 1.0, None, 1.0),
    ("valid_outer_whitespace", "\n  " + VALID + "\n\n", 1.0, None, 1.0),
    ("missing_response", "\n".join([U, R, E]), 0.0, "missing", 0.6),
    ("missing_understanding", "\n".join([R, E, S]), 0.0, "missing", 0.6),
    ("plain_text", "That sounds painful.", 0.0, "missing", 0.0),
    ("empty_string", "", 0.0, "missing", 0.0),
    ("whitespace_only", " \n\t ", 0.0, "missing", 0.0),
    ("none", None, 0.0, "missing", 0.0),
    ("reordered_emotion_reasoning", "\n".join([U, E, R, S]), 0.0, "out_of_order", 0.8),
    ("response_first", "\n".join([S, U, R, E]), 0.0, "out_of_order", 0.8),
    (
        "empty_emotion",
        "\n".join([U, R, "<|emotion_begin|> \n<|emotion_end|>", S]),
        0.0,
        "empty",
        0.6,
    ),
    (
        "empty_response",
        "\n".join([U, R, E, "<|response_begin|><|response_end|>"]),
        0.0,
        "empty",
        0.6,
    ),
    (
        "nested_reasoning_in_understanding",
        "<|understanding_begin|>a " + R + "<|understanding_end|>" + E + S,
        0.0,
        "nested",
        0.6,
    ),
    (
        "marker_inside_response",
        "\n".join([U, R, E, "<|response_begin|>hi <|emotion_begin|>x<|response_end|>"]),
        0.0,
        "nested",
        0.4,
    ),
    ("duplicated_emotion", "\n".join([U, R, E, E, S]), 0.0, "duplicated", 0.6),
    ("text_before", "Sure! " + VALID, 0.0, "text_outside", 0.8),
    ("text_between", "\n".join([U, R, "so:", E, S]), 0.0, "text_outside", 0.8),
    ("text_after", VALID + " Hope this helps.", 0.0, "text_outside", 0.8),
    ("chat_end_token_after", VALID + "<|im_end|>", 0.0, "text_outside", 0.8),
    (
        "unclosed_response",
        "\n".join([U, R, E, "<|response_begin|>That sounds painful."]),
        0.0,
        "unclosed",
        0.6,
    ),
    ("stray_end_marker", "<|emotion_end|>" + VALID, 0.0, "unbalanced", 0.6),
    ("mixed_notation", "\n".join([U, R, "<emotion>sad</emotion>", S]), 0.0, "mixed_notation", 0.8),
    (
        "wrong_case_marker",
        VALID.replace("<|response_begin|>", "<|Response_begin|>"),
        0.0,
        "unbalanced",
        0.6,
    ),
]


@pytest.mark.parametrize(
    "text,reward,reason,partial", [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES]
)
def test_format_reward_table(text, reward, reason, partial):
    assert format_reward([text]).tolist() == [reward]
    assert format_reasons([text]) == [reason]
    assert format_reward([text], partial_credit=True)[0] == pytest.approx(partial)


def test_format_reward_is_batched_in_order():
    texts = [c[1] for c in FORMAT_CASES]
    np.testing.assert_array_equal(format_reward(texts), [c[2] for c in FORMAT_CASES])
    assert format_reward(texts).dtype == np.float32
    # An invalid answer never earns the full reward, even with partial credit.
    assert (
        format_reward(texts, partial_credit=True)[[c[3] is not None for c in FORMAT_CASES]].max()
        < 1
    )


# (id, completion, gold label, reward, strict reward)
EMOTION_CASES = [
    ("exact", answer("sad"), "sad", 1.0, 1.0),
    ("upper_case", answer("Sad"), "sad", 1.0, 1.0),
    ("shouting_punctuation", answer("SAD!!!"), "sad", 1.0, 1.0),
    ("spaces_and_period", answer("  sad. "), "sad", 1.0, 1.0),
    ("newline_inside", answer("\nsad\n"), "sad", 1.0, 1.0),
    ("asterisks", answer("*lonely*"), "lonely", 1.0, 1.0),
    ("quotes", answer("'grateful'"), "grateful", 1.0, 1.0),
    ("gold_needs_normalising", answer("sad"), " Sad.", 1.0, 1.0),
    ("tags_notation", TAGS, "sad", 1.0, 1.0),
    ("label_content", answer("content"), "content", 1.0, 1.0),
    ("other_label", answer("angry"), "sad", 0.0, 0.0),
    ("not_a_label", answer("happy"), "joyful", 0.0, 0.0),
    ("synonym", answer("sorrowful"), "sad", 0.0, 0.0),
    ("two_labels", answer("sad, lonely"), "sad", 0.0, 0.0),
    ("sentence", answer("I think she is sad"), "sad", 0.0, 0.0),
    ("double_space_phrase", answer("very  sad"), "sad", 0.0, 0.0),
    ("empty_span", answer(" "), "sad", 0.0, 0.0),
    ("missing_span", "\n".join([U, R, S]), "sad", 0.0, 0.0),
    (
        "duplicated_span_hedging",
        "\n".join([U, R, E, "<|emotion_begin|>lonely<|emotion_end|>", S]),
        "sad",
        0.0,
        0.0,
    ),
    ("unclosed_span", "\n".join([U, R, "<|emotion_begin|>sad", S]), "sad", 0.0, 0.0),
    ("mixed_notation_span", "\n".join([U, R, "<emotion>sad<|emotion_end|>", S]), "sad", 0.0, 0.0),
    (
        "label_only_in_response",
        "\n".join([U, R, "<|response_begin|>You seem sad.<|response_end|>"]),
        "sad",
        0.0,
        0.0,
    ),
    ("plain_label_no_markers", "sad", "sad", 0.0, 0.0),
    ("format_broken_elsewhere", "Sure! " + answer("sad"), "sad", 1.0, 0.0),
    ("response_missing_elsewhere", "\n".join([U, R, E]), "sad", 1.0, 0.0),
    ("none_completion", None, "sad", 0.0, 0.0),
]


@pytest.mark.parametrize(
    "text,gold,reward,strict", [c[1:] for c in EMOTION_CASES], ids=[c[0] for c in EMOTION_CASES]
)
def test_emotion_reward_table(text, gold, reward, strict):
    assert emotion_reward([text], [gold]).tolist() == [reward]
    assert emotion_reward([text], [gold], strict=True).tolist() == [strict]


def test_emotion_reward_batch_and_predictions():
    texts = [c[1] for c in EMOTION_CASES]
    golds = [c[2] for c in EMOTION_CASES]
    np.testing.assert_array_equal(emotion_reward(texts, golds), [c[3] for c in EMOTION_CASES])
    assert predicted_emotions([answer("Sad."), answer("sorrowful"), TAGS]) == ["sad", None, "sad"]


def test_emotion_reward_rejects_bad_gold_labels():
    with pytest.raises(DataError, match="gold label 1 .*'happy'.* not one of the 32"):
        emotion_reward([VALID, VALID], ["sad", "happy"])
    with pytest.raises(DataError, match="2 completions but 1 gold labels"):
        emotion_reward([VALID, VALID], ["sad"])
