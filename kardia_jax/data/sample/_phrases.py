# ruff: noqa: E501
# fmt: off
"""Phrase tables for the sample generator: per-emotion wording (how the feeling is named,
validated and appraised) and per-stage templates for user and assistant turns.
All text is original to kardia-jax."""

# emotion -> (polarity, feeling adjective, validation sentence, appraisal clause)
EMOTION_TEXT: dict[str, tuple[str, str, str, str]] = {
    "afraid": ("neg", "scared", "That sounds genuinely frightening, and your fear makes complete sense.", "they sensed a real threat to their safety and still feel exposed"),
    "angry": ("neg", "angry", "You have every right to be angry about being treated this unfairly.", "someone with power over them treated them unfairly"),
    "annoyed": ("neg", "fed up", "That would wear anyone down, especially when it keeps happening.", "a small, repeated disrespect keeps intruding on their space"),
    "anticipating": ("pos", "keyed up", "Waiting on something that matters this much is a lot to hold.", "something important is about to happen and they are counting down to it"),
    "anxious": ("neg", "on edge", "That kind of waiting and worrying is exhausting.", "an uncertain outcome feels threatening and out of their control"),
    "apprehensive": ("neg", "uneasy", "Feeling uneasy before a big step like this is very human.", "a new challenge is coming and they doubt whether they are ready"),
    "ashamed": ("neg", "ashamed", "It takes courage to admit a moment you're not proud of.", "they acted against their own values and judge themselves harshly for it"),
    "caring": ("pos", "protective", "It's clear how much you care about her.", "someone they love is vulnerable and they want to protect and support her"),
    "confident": ("pos", "self-assured", "I can hear how much steadier you feel this time.", "repeated effort has turned into a real belief in their own ability"),
    "content": ("pos", "at peace", "That sounds like a really good kind of quiet.", "their life feels settled and they are savouring a calm moment"),
    "devastated": ("neg", "heartbroken", "I'm so sorry. A loss like this can turn your whole world upside down.", "they lost a companion who was woven into every part of their days"),
    "disappointed": ("neg", "let down", "It's hard when something you were looking forward to falls through.", "a hope they had invested in did not come true"),
    "disgusted": ("neg", "sickened", "That's an ugly thing to witness, and your reaction says a lot about your values.", "they saw someone treated with contempt and it violated their sense of decency"),
    "embarrassed": ("neg", "mortified", "Oof, that moment of realising must have felt awful.", "a private slip became visible to people whose opinion they care about"),
    "excited": ("pos", "thrilled", "That's fantastic news, I can feel your energy from here!", "something they have wanted for a long time is finally happening"),
    "faithful": ("pos", "committed", "Staying devoted through all of that says a lot about you.", "they keep choosing loyalty to their partner even when others doubt it"),
    "furious": ("neg", "furious", "That is infuriating, and anyone would be livid.", "someone damaged what is theirs and escaped without consequences"),
    "grateful": ("pos", "thankful", "What a wonderful thing to happen; moments like that restore faith in people.", "someone showed them kindness they did not expect or owe"),
    "guilty": ("neg", "guilty", "The fact that it bothers you this much shows how much you care.", "they let down someone they love and feel responsible for the hurt"),
    "hopeful": ("pos", "hopeful", "That's a brave step, and it's lovely to hear hope in your words.", "they see a real chance for things to get better after a long wait"),
    "impressed": ("pos", "in awe", "That's genuinely impressive, and it's lovely how much you admire him.", "someone close to them achieved far more than they expected"),
    "jealous": ("neg", "envious", "Jealousy stings, especially when you worked hard for the same thing.", "someone else received what they wanted and felt they had earned"),
    "joyful": ("pos", "overjoyed", "Congratulations! That's such wonderful news.", "a long-hoped-for happy event has arrived in their family"),
    "lonely": ("neg", "lonely", "Feeling alone like that is really hard, and I'm glad you reached out.", "they feel unseen and disconnected from people who could share their days"),
    "nostalgic": ("pos", "nostalgic", "It sounds like those memories hold a lot of warmth.", "memories of a cherished time are resurfacing with both warmth and longing"),
    "prepared": ("pos", "ready", "All that preparation shows; it sounds like you've really done the work.", "their long preparation has given them a solid sense of readiness"),
    "proud": ("pos", "proud", "That's a real achievement, and you deserve to be proud of it.", "they accomplished something hard that they once doubted they could do"),
    "sad": ("neg", "sad", "That sounds really sad, and it's okay to feel the loss.", "something that gave their days meaning is slipping away"),
    "sentimental": ("pos", "sentimental", "Those things carry so much of a person; no wonder it moves you.", "objects tied to someone they loved are stirring tender memories"),
    "surprised": ("pos", "stunned", "What a surprise! That sounds like quite a moment.", "something wonderful happened that they never saw coming"),
    "terrified": ("neg", "terrified", "That sounds terrifying, and I'm so glad you're safe.", "they faced real danger and their body is still reacting to it"),
    "trusting": ("pos", "trusting", "Letting someone in like that takes real trust.", "they chose to rely on someone and feel good about that choice"),
}

# User lines for the generic stages, by polarity; {habit}, {feel}, {coping}, {plan},
# {closing} are filled from the profile, emotion and situation.
USER_GENERIC = {
    "persona": {
        "neg": ["Honestly, yes. {habit}, so this is hard to put down.", "Yeah. {habit}, and it's making this worse."],
        "pos": ["Definitely. {habit}, so this means a lot to me.", "Yes! {habit}, which is probably why I'm so into this."],
    },
    "others": {
        "neg": ["Not really. I haven't told anyone else about it yet.", "Not much. I didn't want to burden anyone with it."],
        "pos": ["Not yet, you're actually the first person I've told.", "Only a couple of people, but I wanted to say it out loud again."],
    },
    "doubt": {
        "neg": ["Up and down. Is it normal to still feel so {feel} about it?", "Not great. Am I overreacting by feeling this {feel}?"],
        "pos": ["Still buzzing. Is it silly to feel this {feel} about it?", "Pretty good! Is it weird that I'm this {feel} about it?"],
    },
    "plan": {
        "neg": ["That might actually help. I think I'll {plan}.", "Yeah, that feels doable. I'll {plan}."],
        "pos": ["I love that idea. I think I'll {plan}.", "Yes, that's perfect. I'll {plan}."],
    },
    "coping": {
        "neg": ["Usually {coping}. Maybe I'll make time for that this week.", "{coping_cap} always helps. I should do that tomorrow."],
        "pos": ["Probably {coping}. I might celebrate that way too.", "{coping_cap}, for sure. That sounds like a good plan for the weekend."],
    },
    "closing": {
        "neg": ["I think that's everything. Thank you for listening, I feel {closing}.", "I'm okay for now, I think. Thanks, I really do feel {closing}."],
        "pos": ["That's all, really! Thanks for sharing the moment with me, I feel {closing}.", "I just needed to tell someone. Thank you, I feel {closing}."],
    },
}
CLOSING_FEEL = {"neg": ["a bit lighter", "calmer than before", "less alone with it"], "pos": ["even happier having said it", "really good about it", "on top of the world"]}

# Assistant: what the user's message of this stage gets in the understanding span.
UNDERSTANDING = {
    "opener": "The user shares that {gist}.",
    "detail": "They walk me through what happened, which shows how vividly {topic} stays with them.",
    "feeling": "They name how {topic} makes them feel, and they seem {feel} in a way they want taken seriously.",
    "persona": "They link this to a familiar pattern in themselves, which makes the feeling heavier to carry.",
    "concern": "They voice a specific worry about {topic}; underneath it they need {need}.",
    "others": "They reveal how little they have shared this with others, so this conversation matters to them.",
    "doubt": "They ask whether feeling {feel} is normal, which hints that they judge themselves for it.",
    "plan": "They accept the idea of a small next step and sound ready to try it.",
    "coping": "They recall what usually helps them recharge, tying the next step to something that already works.",
    "closing": "They are wrapping up and say they feel {closing}; they want to leave feeling heard.",
}
# Persona sentence of the understanding span: at the opener, and (by polarity) at the concern.
PERSONA_OPENER = "As {role}, they {trait}."
PERSONA_CONCERN = {
    "neg": "Because they {trait}, {topic} hits them especially hard.",
    "pos": "Because they {trait}, {topic} means all the more to them.",
}

# The feeling as a noun, for the reasoning span ("This reads as fear: ...").
EMOTION_NOUN = {
    "afraid": "fear", "angry": "anger", "annoyed": "irritation", "anticipating": "anticipation",
    "anxious": "anxiety", "apprehensive": "apprehension", "ashamed": "shame", "caring": "care",
    "confident": "confidence", "content": "contentment", "devastated": "devastation",
    "disappointed": "disappointment", "disgusted": "disgust", "embarrassed": "embarrassment",
    "excited": "excitement", "faithful": "faithfulness", "furious": "fury", "grateful": "gratitude",
    "guilty": "guilt", "hopeful": "hope", "impressed": "admiration", "jealous": "jealousy",
    "joyful": "joy", "lonely": "loneliness", "nostalgic": "nostalgia", "prepared": "readiness",
    "proud": "pride", "sad": "sadness", "sentimental": "tender sentiment", "surprised": "surprise",
    "terrified": "terror", "trusting": "trust",
}

# Assistant: the first sentence of the reasoning span, by stage and polarity.
REASONING_LEAD = {
    "opener": {"neg": "This reads as {noun}: {appraisal}.", "pos": "This reads as {noun}: {appraisal}."},
    "detail": {"neg": "The details point to {noun}, because {appraisal}.", "pos": "The details are full of {noun}, because {appraisal}."},
    "feeling": {"neg": "Their own words confirm {noun}; {appraisal}.", "pos": "Their own words confirm {noun}; {appraisal}."},
    "persona": {"neg": "The pattern they describe amplifies their {noun}, since {appraisal}.", "pos": "The pattern they describe deepens their {noun}, since {appraisal}."},
    "concern": {"neg": "The worry sits on top of {noun}: {appraisal}.", "pos": "A small worry sits beside their {noun}, though {appraisal}."},
    "others": {"neg": "Keeping it to themselves deepens the {noun}; {appraisal}.", "pos": "Telling me so early shows how fresh the {noun} is; {appraisal}."},
    "doubt": {"neg": "Doubting their reaction adds to the {noun}, even though {appraisal}.", "pos": "Wondering if it is silly shows how big the {noun} is, because {appraisal}."},
    "plan": {"neg": "Agreeing to a step eases some of the {noun}, though {appraisal}.", "pos": "Planning a step lets them channel the {noun}, since {appraisal}."},
    "coping": {"neg": "Turning to familiar comfort softens the {noun}, which makes sense because {appraisal}.", "pos": "Familiar comforts let them savour the {noun}, since {appraisal}."},
    "closing": {"neg": "The {noun} has eased in the telling, but {appraisal}.", "pos": "The {noun} is still bright as they wrap up, because {appraisal}."},
}
STRATEGY = {
    "opener": "I should acknowledge the feeling before anything else and invite them to say more.",
    "detail": "I should show I followed the details and make space for how it felt.",
    "feeling": "I should validate the feeling rather than rush to change it.",
    "persona": "I should name the pattern kindly without turning it into a criticism.",
    "concern": "I should take the worry seriously and keep it in proportion.",
    "others": "I should make them feel heard here while gently widening their support.",
    "doubt": "I should normalise the feeling and ease their self-judgement.",
    "plan": "I should encourage the step and keep it small and realistic.",
    "coping": "I should affirm their own way of coping, because it is theirs.",
    "closing": "I should close warmly and leave the door open.",
}

# Assistant response = reaction to this stage + lead-in to the next stage.
REACT = {
    "opener": {"neg": ["{validation}"], "pos": ["{validation}"]},
    "detail": {
        "neg": ["Thank you for walking me through it; it's clear why it hit so hard.", "That sounds like a lot to carry on your own."],
        "pos": ["I love hearing the details; it clearly means a lot to you.", "That's such a vivid picture, thank you for sharing it."],
    },
    "feeling": {
        "neg": ["It makes complete sense to feel that way about {topic_you}.", "Anyone in your place would feel that too."],
        "pos": ["Of course you feel that way about {topic_you}!", "That feeling is completely earned."],
    },
    "persona": {
        "neg": ["Knowing you {trait}, I can see why this is so hard to set down.", "That makes sense when you {trait}."],
        "pos": ["That fits you; when you {trait}, moments like this really land.", "No wonder, since you {trait}."],
    },
    "concern": {
        "neg": ["That worry is understandable, and it doesn't mean you've done anything wrong.", "It's natural to worry about that, and it shows what matters to you."],
        "pos": ["That's a fair thing to wonder about, and it's good you're thinking ahead.", "That's a very human thing to wonder."],
    },
    "others": {
        "neg": ["I'm glad you're sharing it here; carrying it alone is exhausting.", "You don't have to hold it all by yourself."],
        "pos": ["I'm honoured to hear it first.", "It deserves to be said out loud as often as you like."],
    },
    "doubt": {
        "neg": ["It's completely normal; feelings like this don't follow a schedule.", "You're not overreacting; this matters to you."],
        "pos": ["Not silly at all; some moments deserve to be felt fully.", "Not weird at all, it's a big deal."],
    },
    "plan": {"neg": ["That sounds like a kind and realistic step."], "pos": ["That sounds like a lovely way to mark it."]},
    "coping": {"neg": ["Yes, {coping_you} sounds like exactly the reset you need."], "pos": ["Yes, {coping_you} sounds like a perfect way to enjoy it."]},
    "closing": {
        "neg": ["I'm really glad talking helped a little. Be gentle with yourself, and come back anytime.", "Thank you for trusting me with this. Take care of yourself tonight."],
        "pos": ["Thank you for sharing this with me. Enjoy every bit of it!", "I'm so happy for you. Go enjoy it, you've earned it."],
    },
}
LEAD = {
    "detail": ["What happened?", "Can you tell me more about how it happened?"],
    "feeling": ["How are you feeling about it right now?", "How has it been sitting with you?"],
    "persona": ["Does this touch on something you often deal with?", "Is this the kind of thing that usually gets to you?"],
    "concern": ["What part of it is on your mind the most?", "Is anything worrying you about what comes next?"],
    "others": ["Have you been able to talk to anyone else about it?"],
    "doubt": ["How are you holding up with all of it?"],
    "plan": ["Would it help to {plan_you}?", "Maybe you could {plan_you}. How does that sound?"],
    "coping": ["What usually helps you recharge?"],
    "closing": ["Is there anything else on your mind?", "How are you feeling now that you've talked it through?"],
}
