"""Captions the way people write them, for stage 5 (`training.Plan.phrasing_steps`).

Stage 4 learns the scene language from `scenes.described`: three clause orders, three
background phrasings. People write otherwise (`phrasings` measures how far that carried): the
clauses in any order, joined by commas or "and"; the background "with", "against", "in front
of" or "behind"; a frame around it all ("an image of", "draw"); capitals, full stops, filler
words. `phrased` draws a caption from that wider grammar, with every attribute optional as
before.

Two rules beyond the words:
- Whole templates are held out: a caption whose template (the caption with its scene's words
  replaced by `{size}`, `{colour}`, ... as `phrasings` writes them) is one of `phrasings`'
  families is drawn again, so those families measure phrasings training never saw.
- Where a caption leaves the place unsaid, the scene is nearly always in the centre
  (`UNSAID_PLACE_ELSEWHERE`): a person asking for "a red star" expects one star, not a blend
  of nine candidate places. Trained on captions that leave the place unsaid for any position,
  the stage-4 model drew the asked kind 71% of the time without a place against 92% with one.
"""

from __future__ import annotations

import random

from . import phrasings, scenes

# How often a scene not in the centre is described without its place.
UNSAID_PLACE_ELSEWHERE = 0.02
UNSAID_PLACE_CENTRE = 0.6
KEEP = {"size": 0.8, "colour": 0.9, "shape": 0.9, "background": 0.85}

FRAMES = (
    "an image of",
    "a picture of",
    "a drawing of",
    "an illustration of",
    "a photo of",
    "a painting of",
    "an image showing",
    "a picture showing",
    "an illustration showing",
    "draw",
    "please draw",
    "draw me",
    "paint",
    "make",
    "create",
    "there is",
    "here is",
    "just",
    "show",
    "i want",
)
# The background after the shape; {} is its colour, {plain} an optional filler word.
BACKGROUND_AFTER = (
    "on a {plain}{} background",
    "on {}",
    "over a {plain}{} background",
    "with a {plain}{} background",
    "against a {plain}{} background",
    "in front of a {plain}{} background",
    "on a {plain}{} backdrop",
    "against {}",
    "{plain}{} background",
    "the background {}",
    "background {}",
    "and a {plain}{} background",
    "with the background {}",
    "behind it a {plain}{} background",
)
# The background before the shape.
BACKGROUND_BEFORE = (
    "{plain}{} background,",
    "a {plain}{} background with",
    "on a {plain}{} background,",
    "against a {plain}{} background,",
    "{} background:",
    "a {plain}{} background and",
    "over {},",
)
PLAIN = ("plain ", "simple ", "solid ", "flat ", "")
PLACE_LEADS = ("placed", "sitting", "located", "positioned")
COLOUR_TAILS = ("coloured", "colored")
ENDINGS = (".", "!", " please", ".", "")
ARTICLES = ("a", "one", "the", "a single")

HELD_OUT = frozenset(
    template.lower()
    for family, templates in phrasings.FAMILIES.items()
    if family != phrasings.GRAMMAR
    for template in templates
)


def added_words() -> list[str]:
    """The words these captions use beyond `scenes.vocabulary`, in a fixed order: stage 5's
    tokenizer adds them after the grammar's (see `components.clip_tokenizer`)."""
    known = set(scenes.vocabulary())
    texts = [*FRAMES, *BACKGROUND_AFTER, *BACKGROUND_BEFORE, *PLAIN, *PLACE_LEADS]
    texts += [*COLOUR_TAILS, *ENDINGS, *ARTICLES, "an", "and", ":", "!", "."]
    words: dict[str, None] = {}
    for text in texts:
        for word in _split(text.replace("{plain}", " ").replace("{}", " ")):
            if word not in known:
                words[word] = None
    return list(words)


def _split(text: str) -> list[str]:
    for mark in ",.!:":
        text = text.replace(mark, f" {mark} ")
    return text.split()


def _subject(rng: random.Random, keep: dict[str, bool]) -> str:
    words = []
    if keep["size"]:
        words.append("{size}")
    if keep["colour"]:
        words.append("{colour}")
        if rng.random() < 0.08:
            words.append(rng.choice(COLOUR_TAILS))
    words.append("{shape}" if keep["shape"] else "shape")
    if rng.random() < 0.85:
        words.insert(0, rng.choice(ARTICLES))
    return " ".join(words)


def _template(scene: scenes.Scene, rng: random.Random) -> tuple[str, frozenset[str]]:
    centre = scene.position == "center"
    keep = {name: rng.random() < p for name, p in KEEP.items()}
    unsaid = UNSAID_PLACE_CENTRE if centre else UNSAID_PLACE_ELSEWHERE
    keep["position"] = rng.random() >= unsaid
    named = frozenset(name for name, kept in keep.items() if kept)
    subject = _subject(rng, keep)
    where = "{place}" if keep["position"] else ""
    if where and rng.random() < 0.1:
        where = f"{rng.choice(PLACE_LEADS)} {where}"
    plain = rng.choice(PLAIN) if rng.random() < 0.3 else ""
    clauses = [subject, where] if rng.random() < 0.75 else [where, subject]
    clauses = [c for c in clauses if c]
    if keep["background"]:
        if rng.random() < 0.3:
            lead = rng.choice(BACKGROUND_BEFORE).replace("{plain}", plain)
            clauses.insert(0, lead.format("{background}"))
        else:
            tail = rng.choice(BACKGROUND_AFTER).replace("{plain}", plain)
            clauses.insert(rng.randint(1, len(clauses)), tail.format("{background}"))
    joiner = ", " if rng.random() < 0.35 else " "
    text = joiner.join(clauses)
    for lead in ("with,", "and,", ":,", ",,"):
        text = text.replace(lead, lead[:-1])
    if rng.random() < 0.35:
        frame = rng.choice(FRAMES)
        text = f"{frame} {text}"
    if rng.random() < 0.25:
        text += rng.choice(ENDINGS)
    return text, named


def _case(text: str, rng: random.Random) -> str:
    draw = rng.random()
    if draw < 0.15:
        return text[:1].upper() + text[1:]
    if draw < 0.2:
        return text.title()
    if draw < 0.23:
        return text.upper()
    return text


def phrased(scene: scenes.Scene, rng: random.Random) -> tuple[str, frozenset[str]]:
    """A caption of the scene in ordinary phrasing and the attributes it names; never one of
    the held-out templates."""
    while True:
        template, named = _template(scene, rng)
        if template.lower() not in HELD_OUT:
            break
    words = {
        "size": rng.choice(scenes.SIZE_WORDS[scene.size]),
        "colour": scene.colour,
        "shape": rng.choice(scenes.SHAPE_WORDS[scene.shape]),
        "place": rng.choice(scenes.POSITION_PHRASES[scene.position]),
        "background": scene.background,
    }
    text = template.format(**words)
    # "a" before a vowel reads wrong to a person, and people write "an".
    text = " ".join(
        "an" if w == "a" and nxt[:1] in "aeiou" else w
        for w, nxt in zip(text.split(), [*text.split()[1:], ""], strict=True)
    )
    return _case(text, rng), named
