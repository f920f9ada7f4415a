"""The scene language: what a picture may contain, how it is drawn, how it is described.

A scene is one shape (kind, colour, position, size) on a plain background. Pictures are drawn
with anti-aliased edges at any size, and captions describe them in varied phrasing with every
attribute optional. A fixed set of attribute combinations is held out of training entirely:
the evaluation asks for exactly those, so it measures what the model composes, not recalls.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (250, 140, 20),
    "yellow": (245, 220, 30),
    "green": (30, 160, 50),
    "cyan": (40, 200, 220),
    "blue": (30, 60, 220),
    "purple": (130, 40, 170),
    "pink": (250, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "ring")
# Centre of the shape as a fraction of the picture's width and height.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.26, 0.26),
    "top": (0.5, 0.26),
    "top right": (0.74, 0.26),
    "left": (0.26, 0.5),
    "center": (0.5, 0.5),
    "right": (0.74, 0.5),
    "bottom left": (0.26, 0.74),
    "bottom": (0.5, 0.74),
    "bottom right": (0.74, 0.74),
}
# Side of the shape's bounding box as a fraction of the picture's side.
SIZES: dict[str, float] = {"small": 0.24, "large": 0.46}

RING_HOLE = 0.5  # inner radius of a ring over its outer radius
STAR_INNER = 0.45  # inner radius of a star over its outer radius
JITTER = 0.03  # how far a centre may move from its named position, as a fraction
SIZE_JITTER = 0.08  # relative size variation
HELD_OUT_FRACTION = 0.04
HELD_OUT_SEED = 1234


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    @property
    def combo(self) -> tuple[str, str, str, str, str]:
        return (self.shape, self.colour, self.background, self.position, self.size)


def all_combos() -> list[tuple[str, str, str, str, str]]:
    return [
        (shape, colour, background, position, size)
        for shape in SHAPES
        for colour in COLOURS
        for background in COLOURS
        if background != colour
        for position in POSITIONS
        for size in SIZES
    ]


def held_out_combos() -> frozenset[tuple[str, str, str, str, str]]:
    combos = all_combos()
    rng = random.Random(HELD_OUT_SEED)
    return frozenset(rng.sample(combos, round(len(combos) * HELD_OUT_FRACTION)))


def random_scene(rng: random.Random, exclude: frozenset = frozenset()) -> Scene:
    while True:
        colour, background = rng.sample(list(COLOURS), 2)
        combo = (
            rng.choice(SHAPES),
            colour,
            background,
            rng.choice(list(POSITIONS)),
            rng.choice(list(SIZES)),
        )
        if combo not in exclude:
            break
    return Scene(
        *combo,
        dx=rng.uniform(-JITTER, JITTER),
        dy=rng.uniform(-JITTER, JITTER),
        scale=rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER),
    )


def shape_polygon(shape: str, cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    """The outline of a polygonal shape (square, triangle, star) around its box centre."""
    if shape == "square":
        return [
            (cx - radius, cy - radius),
            (cx + radius, cy - radius),
            (cx + radius, cy + radius),
            (cx - radius, cy + radius),
        ]
    if shape == "triangle":
        return [(cx, cy - radius), (cx + radius, cy + radius), (cx - radius, cy + radius)]
    if shape == "star":
        # Five points, the top one up; centred on the bounding box rather than the origin.
        points = []
        for i in range(10):
            r = radius if i % 2 == 0 else radius * STAR_INNER
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((math.cos(angle) * r, math.sin(angle) * r))
        ys = [y for _, y in points]
        offset = (max(ys) + min(ys)) / 2
        return [(cx + x, cy + y - offset) for x, y in points]
    raise ValueError(f"not a polygon shape: {shape}")


def render(scene: Scene, width: int, height: int | None = None) -> Image.Image:
    """The scene at the given size; drawn 4x larger and reduced, for smooth edges."""
    height = height or width
    ss = 4
    big_w, big_h = width * ss, height * ss
    image = Image.new("RGB", (big_w, big_h), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    fx, fy = POSITIONS[scene.position]
    cx, cy = (fx + scene.dx) * big_w, (fy + scene.dy) * big_h
    radius = SIZES[scene.size] * scene.scale * min(big_w, big_h) / 2
    fill = COLOURS[scene.colour]
    if scene.shape in ("circle", "ring"):
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        if scene.shape == "ring":
            hole = radius * RING_HOLE
            draw.ellipse(
                (cx - hole, cy - hole, cx + hole, cy + hole), fill=COLOURS[scene.background]
            )
    else:
        # Triangles and stars are a little smaller than their box would allow, as drawn.
        draw.polygon(shape_polygon(scene.shape, cx, cy, radius), fill=fill)
    return image.resize((width, height), Image.Resampling.BOX)


# --- Captions -------------------------------------------------------------------------------

SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
SHAPE_WORDS = {
    "circle": ("circle", "disc", "dot"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "star": ("star",),
    "ring": ("ring", "donut"),
}
POSITION_PHRASES = {
    "top left": ("in the top left corner", "at the top left", "in the upper left corner"),
    "top": ("at the top", "at the top center", "in the upper middle"),
    "top right": ("in the top right corner", "at the top right", "in the upper right corner"),
    "left": ("on the left", "at the left", "in the middle left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "at the right", "in the middle right"),
    "bottom left": (
        "in the bottom left corner",
        "at the bottom left",
        "in the lower left corner",
    ),
    "bottom": ("at the bottom", "at the bottom center", "in the lower middle"),
    "bottom right": (
        "in the bottom right corner",
        "at the bottom right",
        "in the lower right corner",
    ),
}
BACKGROUND_PHRASES = ("on a {} background", "on {}", "over a {} background")
BACKGROUND_LEADS = ("{} background,", "a {} background with")
ARTICLES = ("a", "one", "the")


def _object_phrase(scene: Scene, rng: random.Random, keep: dict[str, bool]) -> str:
    words = [rng.choice(ARTICLES)] if rng.random() < 0.8 else []
    if keep["size"]:
        words.append(rng.choice(SIZE_WORDS[scene.size]))
    if keep["colour"]:
        words.append(scene.colour)
    words.append(rng.choice(SHAPE_WORDS[scene.shape]) if keep["shape"] else "shape")
    return " ".join(words)


def caption(scene: Scene, rng: random.Random) -> str:
    """One of many descriptions of the scene; any attribute may be left unsaid."""
    return described(scene, rng)[0]


def described(scene: Scene, rng: random.Random) -> tuple[str, frozenset[str]]:
    """A caption of the scene and the attributes (`Scene` field names) it names."""
    keep = {
        "size": rng.random() < 0.8,
        "colour": rng.random() < 0.85,
        "shape": rng.random() < 0.85,
        "position": rng.random() < 0.8,
        "background": rng.random() < 0.8,
    }
    subject = _object_phrase(scene, rng, keep)
    where = rng.choice(POSITION_PHRASES[scene.position]) if keep["position"] else ""
    named = frozenset(name for name, kept in keep.items() if kept)
    if not keep["background"]:
        parts = [subject, where] if rng.random() < 0.7 else [where, subject]
        return " ".join(p for p in parts if p).replace(" ,", ","), named
    layout = rng.randrange(3)
    if layout == 0:
        parts = [subject, where, rng.choice(BACKGROUND_PHRASES).format(scene.background)]
    elif layout == 1:
        parts = [rng.choice(BACKGROUND_LEADS).format(scene.background), subject, where]
    else:
        parts = [subject, rng.choice(BACKGROUND_PHRASES).format(scene.background), where]
    return " ".join(p for p in parts if p), named


def full_caption(scene: Scene, place: bool = True) -> str:
    """The plain, complete description: the phrasing the evaluation and examples use; without
    PLACE, the same with the shape's position left to the model."""
    where = f"{POSITION_PHRASES[scene.position][0]} " if place else ""
    return f"a {scene.size} {scene.colour} {scene.shape} {where}on a {scene.background} background"


def vocabulary() -> list[str]:
    """Every word a caption can contain, in a fixed order."""
    texts = [*COLOURS, *POSITION_PHRASES, "shape", "background", ","]
    texts += [w for words in SIZE_WORDS.values() for w in words]
    texts += [w for words in SHAPE_WORDS.values() for w in words]
    texts += [p for phrases in POSITION_PHRASES.values() for p in phrases]
    texts += [p.format("") for p in BACKGROUND_PHRASES + BACKGROUND_LEADS]
    texts += list(ARTICLES)
    words: dict[str, None] = {}
    for text in texts:
        for word in text.replace(",", " , ").split():
            words[word] = None
    return list(words)
