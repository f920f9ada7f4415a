"""Ordinary phrasings outside the training grammar, to measure how far the default model follows
them (`python -m scene_model phrasings`).

Training captions (`scenes.described`) put the clauses in three orders, with three background
phrasings and two background leads. People write otherwise: clauses in any order joined by
commas, other prepositions ("with", "against", "in front of"), a frame ("an image of ..."),
capitals and full stops, filler words. Each family below is a handful of such templates; none of
them is a training caption. The scenes are the evaluation's held-out ones, with the same seeds,
so a family's figures compare directly with the training grammar's (`GRAMMAR`) on the same
pictures' noise.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import components, evaluation, scenes

GRAMMAR = "grammar"
# Captions as stage 5 trains on them (`captions.phrased`), those naming all five attributes:
# the seen phrasings. The families below are held out of training whole.
SEEN = "seen"
PROMPTS_PER_FAMILY = 60
PHRASING_SEED = 11


def _words(scene: scenes.Scene) -> dict[str, str]:
    return {
        "size": scene.size,
        "colour": scene.colour,
        "shape": scene.shape,
        "place": scenes.POSITION_PHRASES[scene.position][0],
        "bare_place": scenes.POSITION_PHRASES[scene.position][0]
        .removeprefix("in the ")
        .removeprefix("at the ")
        .removeprefix("on the "),
        "background": scene.background,
    }


# Each family: templates over _words' fields. Every template names all five attributes.
FAMILIES: dict[str, tuple[str, ...]] = {
    # The training grammar's plain caption (`scenes.full_caption`): the reference.
    GRAMMAR: ("a {size} {colour} {shape} {place} on a {background} background",),
    # The same clauses in other orders, joined by commas.
    "order": (
        "a {size} {colour} {shape}, {background} background, {place}",
        "{place}, a {size} {colour} {shape}, on a {background} background",
        "on a {background} background, a {size} {colour} {shape} {place}",
        "a {size} {colour} {shape} on a {background} background, {bare_place}",
    ),
    # Other ways to say where the background is.
    "prepositions": (
        "a {size} {colour} {shape} {place} with a {background} background",
        "a {size} {colour} {shape} {place} against a {background} background",
        "a {size} {colour} {shape} {place} in front of a {background} background",
        "a {size} {colour} {shape} {place}, the background {background}",
    ),
    # A frame around the description.
    "framing": (
        "an image of a {size} {colour} {shape} {place} on a {background} background",
        "a picture of a {size} {colour} {shape} {place} on a {background} background",
        "a drawing showing a {size} {colour} {shape} {place} on a {background} background",
    ),
    # Capitals and punctuation.
    "casing": (
        "A {size} {colour} {shape} {place} on a {background} background.",
        "A {Size} {Colour} {Shape}, {Place}, On A {Background} Background!",
        "{SIZE} {COLOUR} {SHAPE} {PLACE} ON A {BACKGROUND} BACKGROUND",
    ),
    # Filler words around and between the clauses.
    "filler": (
        "please draw a {size} {colour} {shape} {place} on a {background} background",
        "there is a {size} {colour} {shape} {place} on a plain {background} background",
        "a {size} {colour} {shape} placed {place}, on a simple {background} background",
        "just a {size} {colour} coloured {shape} {place} on a {background} background please",
    ),
}


def phrase(template: str, scene: scenes.Scene) -> str:
    words = _words(scene)
    cased = {
        **words,
        **{k.capitalize(): v.title() for k, v in words.items()},
        **{k.upper(): v.upper() for k, v in words.items()},
    }
    return template.format(**cased)


def prompts_for(family: str, chosen: list[scenes.Scene]) -> list[str]:
    """One prompt per scene, each from one of the family's templates (a fixed draw)."""
    rng = random.Random(f"{PHRASING_SEED}-{family}")
    if family == SEEN:
        return [_seen(scene, rng) for scene in chosen]
    return [phrase(rng.choice(FAMILIES[family]), scene) for scene in chosen]


def _seen(scene: scenes.Scene, rng: random.Random) -> str:
    # Imported here: `captions` holds out this module's families, so it imports this module.
    from .captions import phrased

    while True:
        text, named = phrased(scene, rng)
        if len(named) == len(evaluation.TARGETS):
            return text


@dataclass
class PhrasingReport:
    prompts_per_family: int
    size: int
    steps: int
    guidance_scale: float
    # family -> attribute -> fraction right
    accuracy: dict[str, dict[str, float]]
    examples: dict[str, list[str]]

    def markdown(self) -> str:
        names = list(evaluation.TARGETS)
        lines = [
            f"{self.prompts_per_family} held-out scenes per family, {self.size}x{self.size}, "
            f"{self.steps} steps, guidance {self.guidance_scale}; `{GRAMMAR}` and `{SEEN}` are "
            "phrasings training saw, every other family's templates it never saw:",
            "",
            "| phrasing | " + " | ".join(names) + " | all five |",
            "| --- |" + " --- |" * (len(names) + 1),
        ]
        for family, scores in self.accuracy.items():
            lines.append(
                f"| {family} | "
                + " | ".join(f"{scores[n]:.0%}" for n in names)
                + f" | {scores['all']:.0%} |"
            )
        return "\n".join(lines)


def evaluate_phrasings(
    pipe,
    count: int = PROMPTS_PER_FAMILY,
    size: int = components.NATIVE_SIZE,
    steps: int = 20,
    guidance_scale: float = evaluation.GUIDANCE,
    families: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> PhrasingReport:
    pipe.set_progress_bar_config(disable=True)
    chosen = evaluation.evaluation_scenes(count)
    accuracy, examples = {}, {}
    for family in families or [GRAMMAR, SEEN, *(f for f in FAMILIES if f != GRAMMAR)]:
        prompts = dict(zip(chosen, prompts_for(family, chosen), strict=True))
        scores, misses = evaluation.score(
            pipe, chosen, size, steps, guidance_scale, caption=prompts.__getitem__
        )
        scores["all"] = 1 - len(misses) / len(chosen)
        accuracy[family] = scores
        examples[family] = list(prompts.values())[:3]
        if progress:
            progress(f"{family}: " + ", ".join(f"{k} {v:.0%}" for k, v in scores.items()))
    return PhrasingReport(count, size, steps, guidance_scale, accuracy, examples)


def write_report(report: PhrasingReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.__dict__, indent=2) + "\n")
