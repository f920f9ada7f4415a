"""Read a scene back from a picture with plain image analysis: colours, a mask, its moments.

No learned model judges another here. The background is the commonest named colour along the
border; the shape is every pixel far from it; its colour is their median; its position and size
come from the mask's bounding box; its kind from the mask's fill, hole and balance, compared
with the same measures taken on shapes drawn by `scenes.render`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from . import scenes

PALETTE = np.array(list(scenes.COLOURS.values()), dtype=np.float32)
NAMES = list(scenes.COLOURS)
ATTRIBUTES = ("colour", "background", "shape", "position", "size")
SHAPE_THRESHOLD = 80.0  # RGB distance from the background that makes a pixel part of the shape
CLEAN_DISTANCE = 60.0  # RGB distance within which a pixel is the shape's or background's colour
MIN_SHAPE_FRACTION = 0.005


@dataclass(frozen=True)
class Reading:
    """What the picture shows; None where nothing can be read (no shape found)."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    size: str | None
    mask: np.ndarray
    # The share of pixels that are the shape's or the background's colour: a crisp shape leaves
    # only its anti-aliased rim in between (0.97-0.99 as `scenes.render` draws them), a blob
    # a wide blur.
    clean: float

    def matches(self, scene: scenes.Scene) -> dict[str, bool]:
        return {name: getattr(self, name) == getattr(scene, name) for name in ATTRIBUTES}


def nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour for each RGB row."""
    distances = ((rgb[:, None, :] - PALETTE[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


def shape_mask(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    return np.sqrt(((pixels - background) ** 2).sum(-1)) > SHAPE_THRESHOLD


def _box(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    # Percentiles, not extremes: a stray speck must not stretch the box.
    x0, x1 = np.percentile(xs, [1, 99])
    y0, y1 = np.percentile(ys, [1, 99])
    return x0, y0, x1 + 1, y1 + 1


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Fill of the box, emptiness of its middle, and the share of the mask in its top half."""
    x0, y0, x1, y1 = _box(mask)
    box = mask[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
    h, w = box.shape
    fill = box.mean()
    middle = box[
        int(h * 0.4) : max(int(h * 0.6), int(h * 0.4) + 1),
        int(w * 0.4) : max(int(w * 0.6), int(w * 0.4) + 1),
    ]
    hole = 1.0 - middle.mean()
    top = box[: h // 2].sum() / max(box.sum(), 1)
    return np.array([fill, hole, top])


def extent(mask: np.ndarray) -> float:
    """The longer side of the mask's box, as a fraction of the picture's side."""
    x0, y0, x1, y1 = _box(mask)
    return max((x1 - x0) / mask.shape[1], (y1 - y0) / mask.shape[0])


@cache
def prototypes() -> dict[str, tuple[np.ndarray, float]]:
    """Each shape's features, and the extent that parts its two sizes, from drawn shapes."""
    found = {}
    for shape in scenes.SHAPES:
        features, extents = [], []
        for size in scenes.SIZES:
            scene = scenes.Scene(shape, "white", "black", "center", size)
            pixels = np.asarray(scenes.render(scene, 128), dtype=np.float32)
            mask = shape_mask(pixels, PALETTE[NAMES.index("black")])
            features.append(shape_features(mask))
            extents.append(extent(mask))
        found[shape] = (np.mean(features, axis=0), float(np.mean(extents)))
    return found


def read(image: Image.Image) -> Reading:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = pixels.shape
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    counts = np.bincount(nearest_colour(border), minlength=len(NAMES))
    background_index = int(counts.argmax())
    background_pixels = border[nearest_colour(border) == background_index]
    mask = shape_mask(pixels, np.median(background_pixels, axis=0))
    background = NAMES[background_index]
    if mask.mean() < MIN_SHAPE_FRACTION:
        return Reading(background, None, None, None, None, mask, 0.0)

    colour = NAMES[int(nearest_colour(np.median(pixels[mask], axis=0)[None])[0])]
    near = [
        np.sqrt(((pixels - PALETTE[NAMES.index(name)]) ** 2).sum(-1)) < CLEAN_DISTANCE
        for name in (background, colour)
    ]
    clean = float((near[0] | near[1]).mean())
    x0, y0, x1, y1 = _box(mask)
    cx, cy = (x0 + x1) / 2 / w, (y0 + y1) / 2 / h
    position = min(
        scenes.POSITIONS,
        key=lambda name: (
            (scenes.POSITIONS[name][0] - cx) ** 2 + (scenes.POSITIONS[name][1] - cy) ** 2
        ),
    )
    features = shape_features(mask)
    shape = min(
        prototypes(), key=lambda name: float(np.abs(prototypes()[name][0] - features).sum())
    )
    size = "small" if extent(mask) < prototypes()[shape][1] else "large"
    return Reading(background, colour, shape, position, size, mask, clean)
