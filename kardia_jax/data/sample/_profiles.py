# ruff: noqa: E501
# fmt: off
"""Sixteen fictional forum profiles for the sample (12 train, 4 test), in the style of
KardiaBench's profiles: MBTI type, About, Signature, Recent Activities. Invented for
kardia-jax; any resemblance to real people is accidental.

Besides the profile text, each has the few phrases the templates need: `role` (noun
phrase), `trait` (verb phrase after "they"; "their" becomes "your" after "you"), `habit` (first person),
`coping` / `coping_you` (gerund phrase) and `tip` (what the assistant should do)."""

PROFILES: dict[str, dict] = {
    "p01": dict(
        split="train", mbti="INFJ",
        about="29, veterinary nurse on night shifts in a small coastal town. I collect old field guides and I'm teaching myself the cello, slowly and badly.",
        signature="Quiet is not the same as empty.",
        activities=['Posted in "INFJ Lounge": Does anyone else rehearse conversations in the shower?', 'Replied to "Night shift survival tips": Thermos of soup, always.', 'Shared a photo of a heron at low tide.'],
        role="a night-shift veterinary nurse", trait="tend to carry other people's worries quietly and rarely ask for help",
        habit="I tend to replay things in my head long after they happen", coping="walking the beach before my shift", coping_you="a walk on the beach before your shift",
        tip="keep my tone gentle and leave room instead of rushing to fix things",
    ),
    "p02": dict(
        split="train", mbti="ESTP",
        about="34. Run a bike repair shop with my cousin. Weekend motocross, terrible cook, great at parallel parking.",
        signature="Fix it, ride it, repeat.",
        activities=['Posted in "ESTP Hangout": Best way to tell a customer their frame is cracked?', 'Replied to "Adrenaline junkies unite": Track day on Saturday, who is in?', 'Liked a thread about vintage carburettors.'],
        role="a bike shop owner who lives for speed", trait="like to act fast and get restless when things drag on",
        habit="I usually just deal with things head-on and move on", coping="taking the bike out on the coast road", coping_you="a ride on the coast road",
        tip="be direct and practical instead of overly soft",
    ),
    "p03": dict(
        split="train", mbti="INTP",
        about="24, second-year PhD student in computational linguistics. Online chess, too many browser tabs, opinions about fonts.",
        signature="Correlation is not causation, but it is a hint.",
        activities=['Posted in "INTP Corner": Is it normal to understand feelings better in theory than in practice?', 'Replied to "Roommate etiquette": Shared spaces are a coordination problem.', 'Started a thread: Rate my 3 a.m. blunder.'],
        role="a PhD student who lives in their head", trait="would rather analyse a feeling than sit with it",
        habit="I try to logic my way out of feelings, which never really works", coping="losing myself in a long chess game", coping_you="a long game of chess",
        tip="offer clear, honest reasoning and not push emotional language too hard",
    ),
    "p04": dict(
        split="train", mbti="ENFP",
        about="27, primary school art teacher. I volunteer at the animal shelter on Sundays and dream of illustrating picture books one day.",
        signature="Glitter is a lifestyle.",
        activities=['Posted in "ENFP Sunshine Club": Ten unfinished projects and counting!', 'Shared a sketch of a sleepy shelter cat.', 'Replied to "Running for people who hate running": Week six of the plan and still alive.'],
        role="an art teacher with a big heart", trait="throw their whole heart into people and projects",
        habit="I feel everything at full volume", coping="sketching in the park with a coffee", coping_you="some sketching in the park",
        tip="match their warmth while helping them stay grounded",
    ),
    "p05": dict(
        split="train", mbti="ISTJ",
        about="45, accountant, father of two teenagers. I keep a vegetable garden, a spreadsheet for everything and a very tidy shed.",
        signature="Measure twice, cut once.",
        activities=['Posted in "ISTJ Hall": Meal planning for a family of four on a budget.', 'Replied to "Best tomato varieties for clay soil": Try the small plum ones.', 'Liked a thread about filing systems.'],
        role="a careful accountant and father", trait="value reliability and feel unsettled when plans fall apart",
        habit="I like to have a plan for everything", coping="working in the vegetable garden", coping_you="an hour in the vegetable garden",
        tip="be steady and concrete, and respect their need for order",
    ),
    "p06": dict(
        split="train", mbti="ISFP",
        about="31, florist in a busy market town. I play acoustic guitar, hate arguments and talk to my plants more than I'd like to admit.",
        signature="Be soft. Do not let the world make you hard.",
        activities=['Posted in "ISFP Garden": How do you handle rude customers without crying later?', 'Shared a photo of a ranunculus bouquet.', 'Replied to "Long-distance love": Two years in, still counting the days.'],
        role="a gentle florist who avoids conflict", trait="feel things deeply but keep them private",
        habit="I usually keep my feelings to myself so I don't bother anyone", coping="playing guitar alone in the evening", coping_you="some quiet time with your guitar",
        tip="be soft and non-judgemental and let them set the pace",
    ),
    "p07": dict(
        split="train", mbti="ENTJ",
        about="38, operations manager in logistics. Marathon runner, recently divorced, learning that not everything can be optimised.",
        signature="Plan the work, work the plan.",
        activities=['Posted in "ENTJ Command Center": How do you switch off after work when nobody is waiting at home?', 'Replied to "Sub-3:30 training": Intervals on Tuesdays, no excuses.', 'Started a thread: Leadership books that are not nonsense.'],
        role="a driven operations manager", trait="hold themselves to very high standards",
        habit="I'm used to being the one in control", coping="a long early-morning run", coping_you="a long early-morning run",
        tip="acknowledge their competence while making room for feelings",
    ),
    "p08": dict(
        split="train", mbti="ESFJ",
        about="52, school receptionist, mum of three grown kids. I sing in the community choir and bake for half the street.",
        signature="There is always room for one more at the table.",
        activities=['Posted in "ESFJ Kitchen": Recipes that freeze well for a friend after surgery?', 'Shared a photo of a lemon drizzle cake.', 'Replied to "Caring for ageing parents": Take it one appointment at a time.'],
        role="a warm school receptionist and mother", trait="look after everyone else first",
        habit="I always put everyone else first", coping="baking something for the neighbours", coping_you="a batch of baking for the neighbours",
        tip="acknowledge how much they give and encourage them to receive care too",
    ),
    "p09": dict(
        split="train", mbti="INFP",
        about="22, literature student who moved across the country for university. Poetry, rainy windows and far too many houseplants.",
        signature="Not all who wander are lost, some are just looking for a quiet cafe.",
        activities=['Posted in "INFP Haven": How did you make friends in a new city?', 'Shared a short poem about night buses.', 'Replied to "Driving test nerves": Third time lucky, right?'],
        role="a young literature student far from home", trait="search for meaning in everything and take setbacks to heart",
        habit="I overthink what every little thing means", coping="writing in my journal at night", coping_you="some time with your journal",
        tip="honour their depth and gently reflect their feelings back",
    ),
    "p10": dict(
        split="train", mbti="ISTP",
        about="41, aircraft mechanic. I build furniture in my garage, fish when I can and say about ten words a day.",
        signature="If it's broken, I'm listening.",
        activities=['Posted in "ISTP Workshop": Restoring a 1950s hand plane, tips welcome.', 'Shared a photo of a walnut side table.', 'Replied to "Public speaking for introverts": Still hate it.'],
        role="a quiet aircraft mechanic", trait="prefer fixing problems with their hands over talking about them",
        habit="I'd rather fix something than talk about it", coping="building something in the garage", coping_you="an evening in the garage",
        tip="keep it practical and brief, without forcing a heart-to-heart",
    ),
    "p11": dict(
        split="train", mbti="ENFJ",
        about="33, nurse manager on a busy surgical ward. I run a neighbourhood book club and remember everybody's birthday. Usually.",
        signature="Lift as you climb.",
        activities=['Posted in "ENFJ Circle": How do you stop taking care of everyone at 2 a.m.?', 'Replied to "Book club picks": Something hopeful this month, please.', 'Shared a thank-you card from a patient.'],
        role="a caring nurse manager", trait="feel responsible for everyone's wellbeing",
        habit="I feel responsible for how everyone around me is doing", coping="hosting my book club", coping_you="an evening with your book club",
        tip="remind them that their own needs count as much as others'",
    ),
    "p12": dict(
        split="train", mbti="ESTJ",
        about="29, project manager at a construction firm. Rugby on weekends, early riser, zero tolerance for excuses.",
        signature="Say what you'll do. Do what you say.",
        activities=['Posted in "ESTJ Headquarters": Landlords who ignore the contract, what are my options?', 'Replied to "Certification study plans": Twelve weeks, two hours a day.', 'Liked a thread about small business grants.'],
        role="a no-nonsense project manager", trait="like clear rules and get frustrated by unfairness",
        habit="I can't stand it when people don't play fair", coping="hitting the gym after work", coping_you="a session at the gym",
        tip="validate their sense of fairness and help channel it into action",
    ),
    "p13": dict(
        split="test", mbti="INTJ",
        about="36, software architect and amateur astronomer. Dad of a six-year-old who asks better questions than my colleagues.",
        signature="The stars are patient. So am I, mostly.",
        activities=['Posted in "INTJ Observatory": Best beginner telescope for a curious kid?', 'Replied to "Small talk is exhausting": Agreed, but I am trying.', 'Shared a photo of Saturn, slightly blurry.'],
        role="a reserved software architect and father", trait="keep their feelings behind a calm, logical surface",
        habit="I keep most things to myself and think them through alone", coping="setting up the telescope on a clear night", coping_you="a clear night with your telescope",
        tip="be precise and sincere and not overplay the emotion",
    ),
    "p14": dict(
        split="test", mbti="ESFP",
        about="26, barista by day, stand-up comedy hopeful by night. I know every regular's order and most of their secrets.",
        signature="Life is short, order the large.",
        activities=['Posted in "ESFP Party Room": First open-mic set this Friday!', 'Replied to "Flat hunting nightmares": Ninth viewing this month.', 'Shared a latte art heart that looks like a potato.'],
        role="a lively barista and aspiring comedian", trait="light up around people but hide their stress behind jokes",
        habit="I joke about everything, even when I'm stressed", coping="dancing around the kitchen with loud music", coping_you="some loud music and kitchen dancing",
        tip="enjoy their humour while making space for what is underneath",
    ),
    "p15": dict(
        split="test", mbti="ISFJ",
        about="58, semi-retired school librarian. I knit, volunteer at the hospice on Thursdays and keep every letter I was ever sent.",
        signature="A kind word is never wasted.",
        activities=['Posted in "ISFJ Nook": How do you let go of a family home?', 'Shared a photo of a half-finished blue cardigan.', 'Replied to "Old friends": Write the letter, it is never too late.'],
        role="a gentle retired librarian", trait="hold on tightly to people, places and memories",
        habit="I hold on to memories more than most people do", coping="knitting with the radio on", coping_you="some knitting with the radio on",
        tip="be patient and tender and honour what the past means to them",
    ),
    "p16": dict(
        split="test", mbti="ENTP",
        about="30, founder of a tiny budgeting app and host of a podcast about failure. I argue both sides for fun.",
        signature="Every no is data.",
        activities=['Posted in "ENTP Debate Club": Is rest productive? Discuss.', 'Replied to "Founder burnout": Took a whole day off and survived.', 'Shared an episode: Ten rejections and what they taught me.'],
        role="a restless startup founder", trait="chase the next idea and rarely stop to feel a setback",
        habit="I usually spin every setback into a new idea straight away", coping="recording a rambling podcast episode", coping_you="recording a rambling episode",
        tip="engage their mind but slow them down enough to feel it",
    ),
}


def person_text(p: dict) -> str:
    """The raw profile string, as a record's `person` field holds it."""
    acts = "\n".join(f"- {a}" for a in p["activities"])
    return (
        f"MBTI: {p['mbti']}\nAbout: {p['about']}\nSignature: {p['signature']}\n"
        f"Recent Activities:\n{acts}"
    )
