"""The 32 EmpatheticDialogues emotion labels that KardiaBench uses, and a normaliser
that maps free text (case, whitespace, punctuation) onto them or flags it as unknown."""

from __future__ import annotations

import re

# Order as in the paper's label list (alphabetical); the index is a stable class id.
EMOTIONS: tuple[str, ...] = (
    "afraid",
    "angry",
    "annoyed",
    "anticipating",
    "anxious",
    "apprehensive",
    "ashamed",
    "caring",
    "confident",
    "content",
    "devastated",
    "disappointed",
    "disgusted",
    "embarrassed",
    "excited",
    "faithful",
    "furious",
    "grateful",
    "guilty",
    "hopeful",
    "impressed",
    "jealous",
    "joyful",
    "lonely",
    "nostalgic",
    "prepared",
    "proud",
    "sad",
    "sentimental",
    "surprised",
    "terrified",
    "trusting",
)
EMOTION_SET = frozenset(EMOTIONS)
EMOTION_ID = {e: i for i, e in enumerate(EMOTIONS)}

# Everything that is not a letter is noise around a one-word label ("Sad.", " *lonely* ",
# "'grateful'"); internal spaces are collapsed so "very  sad" stays detectably unknown.
_NOT_LETTER_EDGES = re.compile(r"^[\W\d_]+|[\W\d_]+$")
_SPACES = re.compile(r"\s+")


def normalize_emotion(text: str) -> str | None:
    """Return the canonical label for `text`, or None when it is not one of the 32.

    Tolerates case, surrounding whitespace and punctuation; anything else (synonyms,
    several words, a sentence) is unknown, since the emotion reward is exact match.
    """
    if not isinstance(text, str):
        return None
    label = _SPACES.sub(" ", _NOT_LETTER_EDGES.sub("", text.strip())).lower()
    return label if label in EMOTION_SET else None


def is_known_emotion(text: str) -> bool:
    return normalize_emotion(text) is not None
