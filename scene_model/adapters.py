"""Style adapters for the default model: small LoRAs on its transformer, and judges of them.

Each style is a transform of the exact target picture of a scene (`scenes.render`): `outline`
keeps only a rim of the shape, `stripes` fills the shape with horizontal bands of white,
`palette` swaps every colour
of the whole picture for its opposite. An adapter learns it from the model's
ordinary captions (no trigger word: loading the adapter is asking for the style), by the flow
matching of `training.train_denoiser`, with the base weights and the text encoders frozen.

The judges read a generated picture with plain pixel measures, given the scene it was asked
for; each says whether its style is there.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from . import captions, channels, components, evaluation, scenes, training

LORA_FILE = "pytorch_lora_weights.safetensors"
INFO_FILE = "adapter.json"
ADAPTER_NAME = "style"
RANK = 4
TARGET_MODULES = [
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
]
OUTLINE_WIDTH = 4  # pixels at 128 px
STRIPE_PERIOD = 16  # pixels at 128 px: a band of the shape's colour, then one of white (the
# autoencoder loses bands of 4 pixels)
STRIPE_COLOUR = (245, 245, 245)  # white; on a white shape, black
STRIPE_COLOUR_ON_WHITE = (20, 20, 20)


# --- The styles: transforms of a rendered scene ------------------------------------------------


def coverage(image: Image.Image, scene: scenes.Scene) -> np.ndarray:
    """How much of each pixel of a rendered SCENE the shape covers, 0..1 (edges are partial)."""
    pixels = np.asarray(image, dtype=np.float32)
    fg = np.array(scenes.COLOURS[scene.colour], dtype=np.float32)
    bg = np.array(scenes.COLOURS[scene.background], dtype=np.float32)
    direction = fg - bg
    alpha = ((pixels - bg) @ direction) / float(direction @ direction)
    return np.clip(alpha, 0.0, 1.0)


def _blend(scene: scenes.Scene, shape: np.ndarray, fill: np.ndarray) -> Image.Image:
    """Background colour, with FILL (h, w, 3) where SHAPE (h, w) is 1."""
    bg = np.array(scenes.COLOURS[scene.background], dtype=np.float32)
    pixels = bg + shape[..., None] * (fill - bg)
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8))


def outline(image: Image.Image, scene: scenes.Scene) -> Image.Image:
    """Only a rim of the shape, OUTLINE_WIDTH pixels wide at 128 px, inside the shape's edge."""
    alpha = coverage(image, scene)
    width = max(1, round(OUTLINE_WIDTH * image.width / 128))
    mask = Image.fromarray((alpha * 255).astype(np.uint8))
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(2 * width + 1)), dtype=np.float32) / 255
    rim = np.clip(alpha - inner, 0.0, 1.0)
    return _blend(scene, rim, np.array(scenes.COLOURS[scene.colour], dtype=np.float32))


def stripe_colour(scene: scenes.Scene) -> tuple[int, int, int]:
    return STRIPE_COLOUR_ON_WHITE if scene.colour == "white" else STRIPE_COLOUR


def stripe_rows(height: int) -> np.ndarray:
    """1 on the rows of the white bands, 0 on the shape-coloured ones."""
    half = STRIPE_PERIOD * height / 128 / 2
    return ((np.arange(height) + 0.5) // half % 2).astype(np.float32)


def stripes(image: Image.Image, scene: scenes.Scene) -> Image.Image:
    """The shape filled with horizontal bands, alternately its colour and white."""
    alpha = coverage(image, scene)
    colour = np.array(scenes.COLOURS[scene.colour], dtype=np.float32)
    band = np.array(stripe_colour(scene), dtype=np.float32)
    rows = stripe_rows(image.height)[:, None, None]
    fill = colour + rows * (band - colour)
    return _blend(scene, alpha, fill)


# Every named colour for its opposite: hue turned about 180 degrees, white and black swapped. A
# palette of named colours, not a per-pixel formula, since the autoencoder draws only those well
# (inverted purple, a pale green, came back from it as a blur).
OPPOSITES: dict[str, str] = {}
for _a, _b in (
    ("red", "cyan"),
    ("orange", "blue"),
    ("yellow", "purple"),
    ("green", "pink"),
    ("white", "black"),
):
    OPPOSITES[_a], OPPOSITES[_b] = _b, _a


def palette(image: Image.Image, scene: scenes.Scene) -> Image.Image:
    """The whole picture in the opposite colours (`OPPOSITES`): shape and background alike."""
    alpha = coverage(image, scene)
    shifted = replace(scene, colour=OPPOSITES[scene.colour], background=OPPOSITES[scene.background])
    return _blend(shifted, alpha, np.array(scenes.COLOURS[shifted.colour], dtype=np.float32))


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    transform: Callable[[Image.Image, scenes.Scene], Image.Image]
    # Extra loss weight on the latents of the shape and one latent around it: the styles that
    # change the shape alone change a few percent of the latents.
    shape_weight: float


STYLES: dict[str, Style] = {
    "outline": Style(
        "outline",
        "Draws the shape as an outline only: a rim of the shape's colour, its inside the "
        "background's colour.",
        outline,
        5.0,
    ),
    "stripes": Style(
        "stripes",
        "Fills the shape with horizontal stripes, alternately the shape's colour and white "
        "(black on a white shape).",
        stripes,
        5.0,
    ),
    "palette": Style(
        "palette",
        "Shifts the palette of the whole picture, shape and background alike, to the opposite "
        "colours: red and cyan, orange and blue, yellow and purple, green and pink, white and "
        "black swap.",
        palette,
        1.0,
    ),
}


def target(scene: scenes.Scene, style: str, size: int = components.NATIVE_SIZE) -> Image.Image:
    """The exact picture of SCENE in STYLE."""
    return STYLES[style].transform(scenes.render(scene, size), scene)


# --- Training ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    steps: int = 6000
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 50
    decay: float = 0.2  # the share of the steps, at the end, over which the rate falls to zero
    pool: int = 3000  # styled pictures, encoded once
    empty_caption: float = 0.1  # guidance's unconditioned pass draws the style too
    checkpoint_every: int = 50


def _rng(style: str, *parts: object) -> random.Random:
    return training._rng("adapter", style, *parts)


def training_caption(scene: scenes.Scene, rng: random.Random, recipe: Recipe) -> str:
    """The model's own captions: grammar and ordinary phrasings, sometimes none."""
    if rng.random() < recipe.empty_caption:
        return ""
    describe = scenes.described if rng.random() < 0.5 else captions.phrased
    return describe(scene, rng)[0]


def narrow_pipeline(model: Path):
    """MODEL's pipeline with its autoencoder and transformer in the 8 trained channels.

    The widened transformer differs only in its patch embedding and output (see `channels`);
    the attention layers an adapter changes are the same, so a LoRA trained on the narrow one
    loads on the shipped one.
    """
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model)
    pipe.vae = channels.narrow_autoencoder(pipe.vae)
    pipe.transformer = channels.narrow_transformer(pipe.transformer)
    for module in (pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        module.requires_grad_(False).eval()
    return pipe


def build_pool(work: Path, pipe, style: str, recipe: Recipe):
    """Scenes (none of the held-out combinations) and their styled pictures' latents."""
    path = work / f"latents-{style}.pt"
    if path.exists():
        state = torch.load(path, weights_only=False)
        if len(state["scenes"]) == recipe.pool:
            return state["scenes"], state["latents"]
    rng = _rng(style, "pool")
    held_out = scenes.held_out_combos()
    drawn = [scenes.random_scene(rng, held_out) for _ in range(recipe.pool)]
    vae = pipe.vae
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    chunks = []
    for start in range(0, len(drawn), 64):
        images = training.to_tensor([target(s, style) for s in drawn[start : start + 64]])
        with torch.no_grad():
            chunks.append((vae.encode(images).latent_dist.mean - shift) * scale)
    latents = torch.cat(chunks)
    work.mkdir(parents=True, exist_ok=True)
    training._save(path, {"scenes": drawn, "latents": latents})
    return drawn, latents


def lora_config():
    from peft import LoraConfig

    return LoraConfig(
        r=RANK,
        lora_alpha=RANK,
        target_modules=TARGET_MODULES,
        init_lora_weights="gaussian",
    )


def train_adapter(
    style: str,
    model: Path,
    out: Path,
    work: Path,
    recipe: Recipe,
    command: str,
    log: Callable[[str], None] = print,
    init: Path | None = None,
) -> dict:
    """Train (or resume) STYLE's adapter, checkpointing in WORK; save it in OUT, with COMMAND
    as the way to train it again.

    With INIT, a saved adapter's folder, the LoRA starts from its weights (a second run, its
    rate warming up and decaying again), checkpoints apart from a first run's, and OUT records
    both runs: their steps, seconds and commands.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    torch.manual_seed(training.SEED)
    pipe = narrow_pipeline(model)
    before = json.loads((init / INFO_FILE).read_text()) if init else None
    scenes_, latents = build_pool(work / style, pipe, style, recipe)
    work = work / (style if init is None else f"{style}-continued")
    work.mkdir(parents=True, exist_ok=True)
    shapes = training.shape_masks(scenes_, components.NATIVE_SIZE)
    transformer = pipe.transformer
    transformer.requires_grad_(False)
    transformer.add_adapter(lora_config(), adapter_name=ADAPTER_NAME)
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
    path = work / "checkpoint.pt"
    step, seconds = 0, 0.0
    recipe_state = {**recipe.__dict__, **({"init": before} if before else {})}
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state["recipe"] != recipe_state:
            raise ValueError(
                f"{path} was trained by {state['recipe']}, not {recipe_state}: delete it "
                "to train afresh, or train into another --work folder."
            )
        set_peft_model_state_dict(transformer, state["lora"], adapter_name=ADAPTER_NAME)
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
        log(f"resumed {style} at step {step}")
    elif init is not None:
        saved = load_file(init / LORA_FILE)
        layers = {k.removeprefix("transformer."): v.float() for k, v in saved.items()}
        set_peft_model_state_dict(transformer, layers, adapter_name=ADAPTER_NAME)
        log(f"{style} starts from {init} ({before['steps']} steps)")
    transformer.set_attn_processor(training.SilentT5Attention(components.T5_TOKENS))
    transformer.train()
    started, losses = time.monotonic() - seconds, []
    style_weight = STYLES[style].shape_weight
    decay = max(1.0, recipe.decay * recipe.steps)
    while step < recipe.steps:
        rng = _rng(style, step)
        picks = [rng.randrange(len(scenes_)) for _ in range(recipe.batch)]
        batch = latents[picks]
        texts = [training_caption(scenes_[i], rng, recipe) for i in picks]
        with torch.no_grad():
            context, pooled = training.encode_captions(pipe, texts)
        noise_gen = training._generator("adapter", style, "noise", step)
        error = training.flow_error(transformer, batch, context, pooled, noise_gen)
        weight = 1 + (style_weight - 1) * shapes[picks]
        loss = (error * weight).sum() / (weight.sum() * error.shape[1])
        rate = recipe.lr * min(1.0, (step + 1) / recipe.warmup, (recipe.steps - step) / decay)
        training.optimise(optimizer, params, loss, rate)
        step += 1
        losses.append(loss.item())
        if step % recipe.checkpoint_every == 0 or step == recipe.steps:
            seconds = time.monotonic() - started
            training._save(
                path,
                {
                    "lora": get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "recipe": recipe_state,
                    "seconds": seconds,
                },
            )
            log(
                f"{style} step {step}/{recipe.steps} loss {np.mean(losses[-50:]):.4f} "
                f"{seconds / step:.3f} s/step"
            )
    seconds = time.monotonic() - started
    layers = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    steps = recipe.steps
    if before:
        steps, seconds = before["steps"] + steps, before["seconds"] + seconds
        command = f"{before['training']} && {command}"
    return save_adapter(out, style, layers, steps, seconds, command)


def save_adapter(
    out: Path, style: str, layers: dict, steps: int, seconds: float, command: str
) -> dict:
    from diffusers import StableDiffusion3Pipeline

    out.mkdir(parents=True, exist_ok=True)
    layers = {k: v.detach().to(torch.float16).contiguous() for k, v in layers.items()}
    StableDiffusion3Pipeline.save_lora_weights(
        out, transformer_lora_layers=layers, safe_serialization=True
    )
    info = {
        "description": STYLES[style].description,
        "base_model": "models/default",
        "rank": RANK,
        "steps": steps,
        "seconds": round(seconds),
        "training": command,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return info


# --- Judges -----------------------------------------------------------------------------------

JUDGE_DISTANCE = 90.0  # RGB distance within which a pixel is counted as a named colour


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def _near(pixels: np.ndarray, name: str) -> np.ndarray:
    """Where PIXELS are the named colour: nearer it than any other, and near enough."""
    from . import analysis

    flat = pixels.reshape(-1, 3)
    nearest = analysis.nearest_colour(flat).reshape(pixels.shape[:2])
    distance = np.sqrt(((pixels - np.asarray(scenes.COLOURS[name], dtype=np.float32)) ** 2).sum(-1))
    return (nearest == analysis.NAMES.index(name)) & (distance < JUDGE_DISTANCE)


INTERIOR_MARGIN = 5  # pixels at 128 px: how far inside the shape its interior starts


def _centre(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array(
        [np.percentile(ys, [1, 99]).mean(), np.percentile(xs, [1, 99]).mean()], dtype=np.float32
    )


def interior(scene: scenes.Scene, drawn: np.ndarray | None = None) -> np.ndarray:
    """The inside of SCENE's shape, INTERIOR_MARGIN pixels in from its edge, as drawn exactly;
    moved to where DRAWN (a mask of the shape's colour) has its box centre, if given."""
    plain = scenes.render(scene, components.NATIVE_SIZE)
    shape = coverage(plain, scene) > 0.5
    if drawn is not None:
        dy, dx = np.round(_centre(drawn) - _centre(shape)).astype(int)
        shape = np.roll(shape, (dy, dx), axis=(0, 1))
    picture = Image.fromarray(shape.astype(np.uint8) * 255)
    core = picture.filter(ImageFilter.MinFilter(2 * INTERIOR_MARGIN + 1))
    return np.asarray(core) > 127


def inside(image: Image.Image, scene: scenes.Scene) -> tuple[float, float]:
    """The shares of the shape's interior (see `interior`) that are the background's colour
    and the shape's: about 0 and 1 for a solid shape, 1 and 0 for an outline, and for stripes
    about half the shape's colour."""
    pixels = _pixels(image)
    drawn = _near(pixels, scene.colour)
    if drawn.sum() < 12:
        return 0.0, 0.0
    core = interior(scene, drawn)
    if not core.any():
        return 0.0, 0.0
    background = _near(pixels, scene.background)
    return float(background[core].mean()), float(drawn[core].mean())


def banded(image: Image.Image, scene: scenes.Scene) -> np.ndarray:
    """Where IMAGE is neither the background's colour nor the stripes': the shape's bands,
    whatever their exact colour (an adapter may drift it)."""
    pixels = _pixels(image)
    band = np.asarray(stripe_colour(scene), dtype=np.float32)
    stripe = np.sqrt(((pixels - band) ** 2).sum(-1)) < JUDGE_DISTANCE
    return ~_near(pixels, scene.background) & ~stripe


def stripe_runs(image: Image.Image, scene: scenes.Scene) -> int:
    """How many bands of the stripe period lie inside the shape: the runs of rows, between two
    rows where the shape's colour fills its width, where it does not (each about half the
    stripe period high)."""
    drawn = banded(image, scene)
    if drawn.sum() < 12:
        return 0
    ys, xs = np.nonzero(drawn)
    y0, y1 = np.percentile(ys, [1, 99]).astype(int)
    x0, x1 = np.percentile(xs, [1, 99]).astype(int)
    profile = drawn[y0 : y1 + 1, x0 : x1 + 1].mean(1)
    high = profile > 0.35 * profile.max()
    half = STRIPE_PERIOD * image.height / 128 / 2
    runs, length, seen_high = 0, 0, False
    for row in high:
        if row:
            if seen_high and 0.4 * half <= length <= 1.6 * half:
                runs += 1
            seen_high, length = True, 0
        else:
            length += 1
    return runs


def background_is_opposite(image: Image.Image, scene: scenes.Scene) -> bool:
    from . import analysis

    return analysis.read(image).background == OPPOSITES[scene.background]


def _area(scene: scenes.Scene) -> float:
    """The pixels the scene's shape covers, drawn plain at the native size."""
    return float(coverage(scenes.render(scene, components.NATIVE_SIZE), scene).sum())


def distinguishable(scene: scenes.Scene) -> bool:
    """Whether the judges tell SCENE's styles apart on its exact pictures: each says yes to its
    style and no to the plain picture. Its shape must have an interior (see `interior`) to look
    into: small stars and small rings have none, their arms and rim thinner than two outline
    widths."""
    plain = scenes.render(scene, components.NATIVE_SIZE)
    return interior(scene).sum() >= 20 and all(
        judge(style, STYLES[style].transform(plain, scene), scene)
        and not judge(style, plain, scene)
        for style in STYLES
    )


def judge(style: str, image: Image.Image, scene: scenes.Scene) -> bool:
    """Whether IMAGE, drawn for SCENE, shows STYLE, on pixel measures alone.

    - outline: the shape's colour covers an eighth to one and a half of the plain shape's area
      (not the whole picture, as when shape and background swap colours), while the shape's
      interior (see `interior`) is more than half the background's colour and under a third
      the shape's (a solid shape's is none and all);
    - stripes: inside the shape's box, runs of rows of the stripes' or the background's colour,
      each about half the stripe period high, between rows full of anything else (the shape's
      bands, whatever their exact colour; see `banded`); and its interior partly those bands;
    - palette: the background is the asked one's opposite colour.
    """
    if style == "palette":
        return background_is_opposite(image, scene)
    if style not in STYLES:
        raise ValueError(f"no such style: {style}")
    background, colour = inside(image, scene)
    if style == "outline":
        drawn = _near(_pixels(image), scene.colour).sum()
        area = _area(scene)
        return bool(0.12 * area <= drawn <= 1.5 * area and background > 0.5 and colour < 0.3)
    drawn = banded(image, scene)
    core = interior(scene, drawn) if drawn.sum() >= 12 else np.zeros_like(drawn)
    share = float(drawn[core].mean()) if core.any() else 0.0
    return bool(0.2 <= share <= 0.85 and stripe_runs(image, scene) >= 1)


# --- Checks and samples -----------------------------------------------------------------------

GUIDANCE = evaluation.GUIDANCE
STEPS = 20


def check_scenes(count: int) -> list[scenes.Scene]:
    """Held-out scenes (see `evaluation`), those whose styles the judges can tell apart."""
    chosen = evaluation.evaluation_scenes(4 * count)
    return [scene for scene in chosen if distinguishable(scene)][:count]


def load_adapters(pipe, loras: Path) -> list[str]:
    """Load every adapter folder under LORAS onto PIPE, by its folder's name; returns them."""
    names = [style for style in STYLES if (loras / style / LORA_FILE).exists()]
    for name in names:
        if name not in pipe.get_list_adapters().get("transformer", []):
            pipe.load_lora_weights(loras / name, adapter_name=name)
    return names


def use(pipe, name: str | None) -> None:
    """Draw with adapter NAME alone at full weight, or with none."""
    if name is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters([name], adapter_weights=[1.0])


def draw(pipe, chosen: list[scenes.Scene], seeds: list[int]) -> list[Image.Image]:
    images = []
    for start in range(0, len(chosen), 10):
        prompts = [scenes.full_caption(scene) for scene in chosen[start : start + 10]]
        images += evaluation.generate(
            pipe, prompts, seeds[start : start + 10], components.NATIVE_SIZE, STEPS, GUIDANCE
        )
    return images


def check(pipe, loras: Path, count: int = 20) -> dict[str, dict[str, float]]:
    """For no adapter and each adapter under LORAS: the share of COUNT held-out prompts (seeds
    0..COUNT-1) on which each style's judge says yes."""
    pipe.set_progress_bar_config(disable=True)
    chosen = check_scenes(count)
    seeds = list(range(len(chosen)))
    table = {}
    for name in [None, *load_adapters(pipe, loras)]:
        use(pipe, name)
        images = draw(pipe, chosen, seeds)
        table[name or "none"] = {
            style: sum(
                judge(style, image, scene) for image, scene in zip(images, chosen, strict=True)
            )
            / len(chosen)
            for style in STYLES
        }
    use(pipe, None)
    return table


def markdown(table: dict[str, dict[str, float]], count: int) -> str:
    lines = [
        f"{count} held-out prompts (seeds 0-{count - 1}), {components.NATIVE_SIZE}x"
        f"{components.NATIVE_SIZE}, {STEPS} steps, guidance {GUIDANCE}: the share of pictures "
        "each judge says shows its style",
        "",
        "| adapter | " + " | ".join(f"{style} judge" for style in STYLES) + " |",
        "| --- |" + " --- |" * len(STYLES),
    ]
    for name, rates in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{rates[s]:.0%}" for s in STYLES) + " |")
    return "\n".join(lines)


SAMPLE_SCENES = (
    scenes.Scene("circle", "red", "blue", "center", "large"),
    scenes.Scene("star", "yellow", "purple", "top left", "large"),
    scenes.Scene("square", "green", "pink", "bottom right", "large"),
    scenes.Scene("triangle", "white", "black", "center", "large"),
)


def sample_grid(pipe, loras: Path, path: Path, seed: int = 0) -> None:
    """Rows of SAMPLE_SCENES' prompts, drawn without an adapter and with each; one PNG."""
    pipe.set_progress_bar_config(disable=True)
    names = [None, *load_adapters(pipe, loras)]
    columns = []
    for name in names:
        use(pipe, name)
        columns.append(draw(pipe, list(SAMPLE_SCENES), [seed] * len(SAMPLE_SCENES)))
    use(pipe, None)
    size, pad, header, label = components.NATIVE_SIZE, 6, 18, 190
    grid = Image.new(
        "RGB",
        (label + len(names) * (size + pad) + pad, header + len(SAMPLE_SCENES) * (size + pad) + pad),
        "white",
    )
    painter = ImageDraw.Draw(grid)
    for c, name in enumerate(names):
        painter.text((label + pad + c * (size + pad), 4), name or "no adapter", fill="black")
    for r, scene in enumerate(SAMPLE_SCENES):
        y = header + pad + r * (size + pad)
        painter.multiline_text(
            (pad, y), evaluation._wrap(scenes.full_caption(scene), 30), fill="black", spacing=2
        )
        for c, images in enumerate(columns):
            grid.paste(images[r], (label + pad + c * (size + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
