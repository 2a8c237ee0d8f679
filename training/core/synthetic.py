"""The embedded default data: a deterministic, synthetic English corpus and sentiment set.

Nothing is downloaded and nothing comes from `../shared`: a small grammar of film
reviews and plain narrative sentences, driven by `random.Random(seed)`. The
sentiment label is decided by the review's *deciding clause*, so a bag of words
is not enough:

- negation flips a clause ("was not good" is negative, "was never boring" positive);
- intensifiers and softeners change wording but not the sign;
- contrast ("X, but Y", "although X, Y", "X, yet Y") lets the later clause decide;
- filler sentences carry no sentiment.
"""

from __future__ import annotations

import random

SUBJECTS = [
    "the acting", "the plot", "the soundtrack", "the dialogue", "the cinematography", "the ending",
    "the pacing", "the script", "the cast", "the direction", "the special effects", "the story",
    "the characters", "the film", "the movie", "the performances", "the editing", "the humour",
    "the lead actress", "the villain", "the score", "the first half", "the final act", "the camera work",
]  # fmt: skip
POSITIVE = [
    "good", "great", "wonderful", "brilliant", "charming", "moving", "delightful", "superb",
    "gripping", "clever", "beautiful", "memorable", "enjoyable", "excellent", "touching", "fresh",
    "funny", "thrilling", "elegant", "powerful",
]  # fmt: skip
NEGATIVE = [
    "bad", "awful", "boring", "dull", "clumsy", "tedious", "weak", "terrible", "predictable",
    "forgettable", "messy", "lifeless", "painful", "shallow", "annoying", "flat", "silly",
    "confusing", "bland", "dreadful",
]  # fmt: skip
INTENSIFIERS = ["very", "really", "extremely", "incredibly", "truly", "remarkably", "so", "quite", "deeply"]
SOFTENERS = ["a bit", "slightly", "somewhat", "rather", "fairly"]
VERBS = ["was", "is", "felt", "seemed", "turned out to be", "looked"]
NEGATED_VERBS = ["was not", "was never", "is not", "wasn't", "felt not at all", "was hardly", "never seemed"]
OPENERS = [
    "i watched this last night.", "my friend recommended it.", "it runs about two hours.",
    "we saw it in a small cinema.", "i went in knowing nothing about it.", "it is based on a novel.",
    "the trailer gave away a lot.", "i saw it twice.", "it premiered at a festival.",
]  # fmt: skip
CONTRASTS = [("{a}, but {b}", 1), ("although {a}, {b}", 1), ("{a}, yet {b}", 1), ("{b}, even though {a}", 1)]
CLOSERS_POS = ["i would watch it again.", "highly recommended.", "worth every minute."]
CLOSERS_NEG = ["i would not watch it again.", "skip this one.", "a waste of an evening."]

NAMES = ["anna", "ben", "clara", "david", "elena", "farid", "grace", "hugo", "iris", "jonas", "kim", "luis"]
PLACES = ["a small town", "the city", "a harbour", "the mountains", "an old house", "a train", "the desert"]
ACTIONS = [
    "walked to", "wrote a letter from", "dreamed about", "returned to", "painted", "left",
    "remembered", "described", "searched", "photographed",
]  # fmt: skip
TIMES = ["in the morning", "after the rain", "every summer", "late at night", "years later", "on sunday"]
NARRATIVE = [
    "{name} {action} {place} {time}.",
    "{time}, {name} and {name2} {action} {place}.",
    "the director filmed the story in {place}.",
    "{name} played the lead, and {name2} wrote the music.",
    "the film follows {name}, who {action} {place} {time}.",
    "critics wrote about {place} and the people who live there.",
]


def _clause(rng: random.Random, positive: bool) -> str:
    """One clause whose sentiment is `positive`, with optional negation and intensity."""
    subject = rng.choice(SUBJECTS)
    negate = rng.random() < 0.35
    # a negated clause uses the opposite adjective: "not boring" is positive
    adj_positive = positive != negate
    adj = rng.choice(POSITIVE if adj_positive else NEGATIVE)
    r = rng.random()
    if r < 0.3:
        adj = f"{rng.choice(INTENSIFIERS)} {adj}"
    elif r < 0.4:
        adj = f"{rng.choice(SOFTENERS)} {adj}"
    verb = rng.choice(NEGATED_VERBS if negate else VERBS)
    return f"{subject} {verb} {adj}"


def review(rng: random.Random) -> tuple[str, int]:
    """A review and its label (1 positive, 0 negative)."""
    label = rng.randrange(2)
    parts: list[str] = []
    if rng.random() < 0.4:
        parts.append(rng.choice(OPENERS))
    kind = rng.random()
    if kind < 0.4:
        template, _ = rng.choice(CONTRASTS)
        clause = template.format(a=_clause(rng, not label), b=_clause(rng, bool(label)))
    elif kind < 0.6:
        clause = f"{_clause(rng, bool(label))} and {_clause(rng, bool(label))}"
    else:
        clause = _clause(rng, bool(label))
    parts.append(clause + ".")
    if rng.random() < 0.25:
        parts.append(rng.choice(CLOSERS_POS if label else CLOSERS_NEG))
    return " ".join(p[0].upper() + p[1:] for p in parts), label


def narrative(rng: random.Random) -> str:
    name, name2 = rng.sample(NAMES, 2)
    sentence = rng.choice(NARRATIVE).format(
        name=name, name2=name2, action=rng.choice(ACTIONS), place=rng.choice(PLACES), time=rng.choice(TIMES)
    )
    return sentence[0].upper() + sentence[1:]


def corpus(n_docs: int, seed: int) -> list[str]:
    """`n_docs` unlabelled documents mixing narrative sentences and review sentences."""
    rng = random.Random(f"corpus-{seed}")
    docs = []
    for _ in range(n_docs):
        sentences = [
            review(rng)[0] if rng.random() < 0.6 else narrative(rng) for _ in range(rng.randint(2, 6))
        ]
        docs.append(" ".join(sentences))
    return docs


def sentiment(n: int, seed: int) -> tuple[list[str], list[str]]:
    """`n` labelled reviews as (texts, labels) with labels 'negative'/'positive'."""
    rng = random.Random(f"sentiment-{seed}")
    texts, labels = [], []
    for _ in range(n):
        text, label = review(rng)
        texts.append(text)
        labels.append("positive" if label else "negative")
    return texts, labels
