"""Generates the bundled sample (train.jsonl, test.jsonl) from the hand-written profiles,
situations and phrase tables beside it. Deterministic: rerunning reproduces the
committed files byte for byte (a test checks this).

    python -m kardia_jax.data.sample.make_sample [OUT_DIR]

Each dialogue follows one arc of 6 to 10 exchanges (opener, detail, feeling, concern,
a suggested step, closing, plus up to four optional stages); every assistant turn holds
the four spans with the dialogue's gold emotion. train.jsonl writes the spans in the
dataset card's tag notation, test.jsonl in the special-token notation, so both paths of
the loader are exercised.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from pathlib import Path

from kardia_jax.data.sample._phrases import (
    CLOSING_FEEL,
    EMOTION_NOUN,
    EMOTION_TEXT,
    LEAD,
    PERSONA_CONCERN,
    PERSONA_OPENER,
    REACT,
    REASONING_LEAD,
    STRATEGY,
    UNDERSTANDING,
    USER_GENERIC,
)
from kardia_jax.data.sample._profiles import PROFILES, person_text
from kardia_jax.data.sample._situations_a import SITUATIONS_A
from kardia_jax.data.sample._situations_b import SITUATIONS_B
from kardia_jax.data.spans import FourSpans

SITUATIONS = SITUATIONS_A + SITUATIONS_B
SEED = 20251201
OPTIONAL = ("persona", "others", "doubt", "coping")
# Stage order of the arc; optional stages are kept or dropped per dialogue.
ARC = (
    "opener", "detail", "feeling", "persona", "concern",
    "others", "doubt", "plan", "coping", "closing",
)  # fmt: skip
# Stages whose reasoning says how the persona shapes the reply.
TIP_STAGES = ("opener", "persona", "plan")
SYSTEM_PROMPT = (
    "You are a warm, emotionally intelligent support companion. Use the user's profile and "
    "situation to understand them. In every reply, first write your understanding of what "
    "they mean and feel, then your reasoning, then their emotion in one word, then your "
    "response.\n\nUser profile:\n{person}\n\nSituation:\n{situation}"
)
NOTATION = {"train": ("tags", "\n"), "test": ("special", "")}


def _you(text: str) -> str:
    """Third person plural -> second person, for the few pronouns the tables use."""
    for a, b in (("themselves", "yourself"), ("their", "your"), ("they", "you"), ("them", "you")):
        text = re.sub(rf"\b{a}\b", b, text)
    return text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def dialogue(index: int, sit: dict) -> dict:
    rng = random.Random(f"{SEED}-{index}")
    prof = PROFILES[sit["profile"]]
    emotion = sit["emotion"]
    pol, feel, validation, appraisal = EMOTION_TEXT[emotion]
    n_optional = rng.randint(0, len(OPTIONAL))  # 6 + n_optional exchanges
    kept = set(rng.sample(OPTIONAL, n_optional))
    stages = [s for s in ARC if s not in OPTIONAL or s in kept]
    slots = dict(
        gist=sit["gist"],
        topic=sit["topic"],
        topic_you=_you(sit["topic"]),
        need=sit["need"],
        plan_you=sit["plan_you"],
        plan=sit["plan_i"],
        habit=prof["habit"],
        coping=prof["coping"],
        coping_cap=_cap(prof["coping"]),
        coping_you=prof["coping_you"],
        feel=feel,
        emotion=emotion,
        noun=EMOTION_NOUN[emotion],
        appraisal=appraisal,
        validation=validation,
        role=prof["role"],
        trait=prof["trait"],
        tip=prof["tip"],
        closing=rng.choice(CLOSING_FEEL[pol]),
    )
    you_slots = {**slots, "trait": _you(prof["trait"])}
    messages = [
        {
            "role": "system",
            "content": SYSTEM_PROMPT.format(person=person_text(prof), situation=sit["situation"]),
        }
    ]
    for i, stage in enumerate(stages):
        user = sit[stage] if stage in sit else rng.choice(USER_GENERIC[stage][pol]).format(**slots)
        understanding = UNDERSTANDING[stage].format(**slots)
        if stage == "opener":
            understanding += " " + PERSONA_OPENER.format(**slots)
        elif stage == "concern":
            understanding += " " + PERSONA_CONCERN[pol].format(**slots)
        reasoning = REASONING_LEAD[stage][pol].format(**slots)
        if stage in TIP_STAGES:
            reasoning += " Since they {trait}, I should {tip}.".format(**slots)
        reasoning += " " + STRATEGY[stage]
        response = rng.choice(REACT[stage][pol]).format(**you_slots)
        if i + 1 < len(stages):
            response += " " + rng.choice(LEAD[stages[i + 1]]).format(**you_slots)
        spans = FourSpans(_cap(understanding), _cap(reasoning), emotion, response)
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": spans})
    digest = hashlib.sha1(f"kardia-jax-sample-{sit['profile']}".encode()).hexdigest()[:8]
    return dict(
        person=person_text(prof),
        mbti=prof["mbti"],
        emotion=emotion,
        situation=sit["situation"],
        anon_username=f"anon_{digest}",
        messages=messages,
    )


def write(out_dir: Path) -> dict[str, int]:
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, (notation, sep) in NOTATION.items():
        lines = []
        for index, sit in enumerate(SITUATIONS):
            if PROFILES[sit["profile"]]["split"] != split:
                continue
            rec = dialogue(index, sit)
            for m in rec["messages"]:
                if isinstance(m["content"], FourSpans):
                    m["content"] = m["content"].format(notation, sep)
            lines.append(json.dumps(rec, ensure_ascii=False))
        (out_dir / f"{split}.jsonl").write_text("\n".join(lines) + "\n", "utf-8")
        counts[split] = len(lines)
    return counts


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    print(write(out))
