"""Training, in stages that each checkpoint and resume: autoencoder, decoder, latents, denoiser.

Everything random is drawn from generators seeded by (seed, stage, step), so a run stopped and
resumed at a checkpoint goes on exactly as an uninterrupted one would, and two runs on the
same machine with the same thread count produce the same weights.
"""

from __future__ import annotations

import math
import random
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import captions, channels, components, scenes, serving

SEED = 20261201


@dataclass(frozen=True)
class Reconstruction:
    name: str  # of the stage: its checkpoint file and its random streams
    steps: int
    batch: int
    size: int
    lr: float
    # Extra weight on the shape's own pixels: a small shape is a few percent of the picture,
    # too little for a plain per-pixel loss to get its colour right.
    shape_weight: float = 0.0


@dataclass(frozen=True)
class Plan:
    # Weighted on the shape from the first step, the autoencoder keeps a small star's points:
    # round trips read kinds back 97.6% right against 90%, small stars 11 of 17 against 0.
    autoencoder: Reconstruction = Reconstruction(
        "autoencoder", 2000, 24, 64, 1e-3, shape_weight=1.0
    )
    decoder: Reconstruction = Reconstruction("decoder", 1500, 8, 128, 3e-4, shape_weight=1.0)
    # Latent pools the denoiser trains on: (picture size, pictures, batch size).
    pools: tuple[tuple[int, int, int], ...] = ((128, 24_000, 32), (64, 12_000, 48), (256, 2_500, 8))
    pool_weights: tuple[float, ...] = (0.65, 0.2, 0.15)
    denoiser_steps: int = 14_500
    denoiser_lr: float = 6e-4
    # Constant after the warm-up, then down to zero over the last steps: the decay is where a
    # constant-rate run collects most of its remaining gain. Over the last 5,000 of 13,500 steps
    # it drew shape colours 90% right and kinds 60%, over the last 1,000 86% and 55%; 1,000
    # more steps in the decay took kinds from 73% to 78% (docs/default-model.md).
    denoiser_decay: int = 6000
    # Loss weight on the latents of the shape and one latent pixel around it, during the decay:
    # the shape is a few percent of the latents, so unweighted its outline is a few percent of
    # the loss. 5x drew kinds 73% right against 64% unweighted, 10x no better
    # (docs/default-model.md).
    decay_shape_weight: float = 5.0
    # Weight of the caption heads' loss against the denoiser's (see `CaptionHeads`); 0 trains
    # without them. 0.1 is the only weight tried: the five heads start at about 10 (chance)
    # against the denoiser's 2.
    caption_heads: float = 0.1
    warmup: int = 400
    # Stage 5: the stage-4 model's text encoders taught ordinary phrasings (`captions`), the
    # rate warming up, constant, then decaying to zero over the last PHRASING_DECAY steps as
    # stage 4's does.
    phrasing_steps: int = 4000
    phrasing_decay: int = 2000
    phrasing_lr: float = 3e-4
    phrasing_warmup: int = 100
    empty_caption: float = 0.1  # classifier-free guidance needs the unconditioned case
    stray_word: float = 0.05  # an unknown word in the caption must not derail the picture
    statistics_pictures: int = 256  # that the latents' shift and scale are measured on
    balanced_channels: bool = True  # see `balance_channels`
    checkpoint_every: int = 250
    threads: int = 2


@dataclass(frozen=True)
class Denoising:
    """One denoiser stage's schedule, from the plan."""

    name: str  # of its checkpoint file and its random streams
    steps: int
    decay: int
    lr: float
    warmup: int
    # A scene's training caption and the attributes it names.
    describe: Callable[[scenes.Scene, random.Random], tuple[str, frozenset[str]]]
    # Of `_trained_modules`: the ones this stage changes.
    trains: tuple[str, ...]


def grammar_stage(plan: Plan) -> Denoising:
    return Denoising(
        "denoiser",
        plan.denoiser_steps,
        plan.denoiser_decay,
        plan.denoiser_lr,
        plan.warmup,
        scenes.described,
        ("transformer", "text_encoder", "text_encoder_2"),
    )


def phrasing_stage(plan: Plan) -> Denoising:
    return Denoising(
        "phrasing",
        plan.phrasing_steps,
        plan.phrasing_decay,
        plan.phrasing_lr,
        plan.phrasing_warmup,
        captions.phrased,
        # The text encoders alone: they learn to give ordinary phrasings what the grammar's
        # captions encode to, and the denoiser stage 4 made draws from that as before.
        ("text_encoder", "text_encoder_2"),
    )


def _rng(*parts: object) -> random.Random:
    return random.Random("/".join(str(p) for p in (SEED, *parts)))


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(_rng(*parts).getrandbits(63))


def to_tensor(images: list) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def shape_pixels(
    images: torch.Tensor, drawn: list[scenes.Scene], threshold: float = 0.0
) -> torch.Tensor:
    """1 where a picture of `drawn` differs from its scene's background by more than THRESHOLD
    (summed over channels, in the -1..1 scale of `to_tensor`), else 0."""
    background = to_tensor([[[scenes.COLOURS[s.background]]] for s in drawn])
    return ((images - background).abs().sum(1, keepdim=True) > threshold).float()


def _save(path: Path, state: dict) -> None:
    # Written aside and renamed: a run stopped mid-write keeps its previous checkpoint.
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


# --- Stages 1 and 2: the autoencoder, then its decoder alone --------------------------------


def train_reconstruction(work: Path, vae, stage: Reconstruction, plan: Plan, params) -> None:
    """Teach `params` of the autoencoder to give back the scenes it is shown."""
    path = work / f"{stage.name}.pt"
    recipe = asdict(stage)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    step = 0
    if path.exists():
        state = torch.load(path, weights_only=False)
        if state.get("stage") != recipe:
            # Resuming would finish another recipe's weights and silently ship them.
            raise ValueError(
                f"{path} was trained by {state.get('stage', 'an unrecorded recipe')}, not this "
                f"plan's {recipe}: to train it again, delete it and the later stages' "
                f"checkpoints in {path.parent}, or train into another --work folder."
            )
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    held_out = scenes.held_out_combos()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, unit="step")
    while step < stage.steps:
        rng = _rng(stage.name, step)
        drawn = [scenes.random_scene(rng, held_out) for _ in range(stage.batch)]
        images = to_tensor([scenes.render(scene, stage.size) for scene in drawn])
        posterior = vae.encode(images).latent_dist
        decoded = vae.decode(posterior.sample(_generator(f"{stage.name}-noise", step))).sample
        # L1 keeps edges sharp and colours exact; a whisper of KL keeps the latents tame.
        loss = F.l1_loss(decoded, images) + F.mse_loss(decoded, images)
        loss = loss + 1e-6 * posterior.kl().mean()
        if stage.shape_weight:
            shape = shape_pixels(images, drawn, threshold=0.05)
            error = (decoded - images).abs() + (decoded - images) ** 2
            loss = loss + stage.shape_weight * (error * shape).sum() / (3 * shape.sum() + 1)
        for group in optimizer.param_groups:
            group["lr"] = stage.lr * 0.5 * (1 + math.cos(math.pi * step / stage.steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % plan.checkpoint_every == 0 or step == stage.steps:
            _save(
                path,
                {
                    "model": vae.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "stage": recipe,
                },
            )
    bar.close()


def train_autoencoder(work: Path, plan: Plan):
    torch.manual_seed(SEED)
    vae = components.autoencoder()
    with torch.no_grad():
        # Start nearly deterministic (latent std 0.02, not 1): sampled latents are not yet
        # drowned in noise, and img2img, which samples them, gets the same tame spread later.
        vae.encoder.conv_out.bias[components.LATENT_CHANNELS :].fill_(-8.0)
    train_reconstruction(work, vae, plan.autoencoder, plan, vae.parameters())
    return vae.eval().requires_grad_(False)


def refine_decoder(work: Path, vae, plan: Plan) -> None:
    """Sharpen the decoder at the native size; the encoder, so the latent space, stays fixed."""
    vae.requires_grad_(False)
    vae.decoder.requires_grad_(True)
    vae.train()
    train_reconstruction(work, vae, plan.decoder, plan, vae.decoder.parameters())
    vae.eval().requires_grad_(False)


# --- Stage 3: latent pools --------------------------------------------------------------------


@dataclass
class Pool:
    size: int
    batch: int
    scenes: list[scenes.Scene]
    latents: torch.Tensor  # normalised the way the pipeline expects
    shapes: torch.Tensor  # 1 on the latents a scene's shape covers or borders, else 0


def shape_masks(drawn: list[scenes.Scene], size: int) -> torch.Tensor:
    """Where each scene's shape lies in its latents, grown by one latent pixel: the autoencoder
    spreads an edge into its neighbours."""
    side = size // components.VAE_SCALE
    covered = shape_pixels(to_tensor([scenes.render(scene, side) for scene in drawn]), drawn)
    return F.max_pool2d(covered, 3, stride=1, padding=1)


def _statistics_latents(vae, plan: Plan) -> torch.Tensor:
    rng = _rng("statistics")
    images = to_tensor(
        [
            scenes.render(scenes.random_scene(rng), components.NATIVE_SIZE)
            for _ in range(plan.statistics_pictures)
        ]
    )
    with torch.no_grad():
        return vae.encode(images).latent_dist.mean


def balance_channels(vae, plan: Plan) -> None:
    """Give every latent channel the same spread, folded exactly into the autoencoder.

    SD3 scales all channels by one factor, so a channel spread wider than the rest stands out
    of the noise earlier in sampling, a narrower one later. The shape-weighted autoencoder's
    channels spread from 0.57 to 2.45; with them balanced its denoiser drew colours 88% right
    against 50% (docs/default-model.md). Multiplying a channel's mean by g multiplies its
    spread by g and its variance by g squared; the decoder divides by g before anything else,
    so it decodes the same pictures.
    """
    with torch.no_grad():
        gain = 1 / _statistics_latents(vae, plan).std(dim=(0, 2, 3))
        mean = slice(0, components.LATENT_CHANNELS)
        logvar = slice(components.LATENT_CHANNELS, None)
        conv_out = vae.encoder.conv_out
        conv_out.weight[mean] *= gain.view(-1, 1, 1, 1)
        conv_out.bias[mean] *= gain
        conv_out.bias[logvar] += 2 * gain.log()
        vae.decoder.conv_in.weight /= gain.view(1, -1, 1, 1)


def latent_statistics(vae, plan: Plan) -> tuple[float, float]:
    """SD3's single shift and scale: the latents' mean and the inverse of their spread."""
    latents = _statistics_latents(vae, plan)
    return latents.mean().item(), 1.0 / latents.std().item()


def fix_latent_space(vae, plan: Plan) -> None:
    """The trained autoencoder's latents as the denoiser sees them: balanced if the plan says
    so, then shifted and scaled."""
    if plan.balanced_channels:
        balance_channels(vae, plan)
    shift, scale = latent_statistics(vae, plan)
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)


def build_pools(work: Path, vae, plan: Plan) -> list[Pool]:
    held_out = scenes.held_out_combos()
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    pools = []
    for size, count, batch in plan.pools:
        path = work / f"latents-{size}.pt"
        if path.exists():
            state = torch.load(path, weights_only=False)
        else:
            rng = _rng("pool", size)
            drawn = [scenes.random_scene(rng, held_out) for _ in range(count)]
            chunks = []
            for start in tqdm(range(0, count, 64), desc=f"latents {size}px", unit="batch"):
                images = to_tensor([scenes.render(s, size) for s in drawn[start : start + 64]])
                with torch.no_grad():
                    chunks.append((vae.encode(images).latent_dist.mean - shift) * scale)
            state = {"scenes": drawn, "latents": torch.cat(chunks)}
            _save(path, state)
        shapes = shape_masks(state["scenes"], size)
        pools.append(Pool(size, batch, state["scenes"], state["latents"], shapes))
    return pools


# --- Stage 4: the denoiser and the text encoders ----------------------------------------------


class SilentT5Attention:
    """SD3's joint attention, with the last context token standing for all silent T5 tokens.

    The pipeline sends 256 T5 tokens that are all zeros, so all 256 are the same key and value
    in every layer. Attention over n identical keys equals attention over one of them with
    log(n) added to its score: the same result as the pipeline's, at a third of the cost.
    """

    def __init__(self, copies: int):
        self.log_copies = math.log(copies)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
        batch, image_tokens, _ = hidden_states.shape
        head_dim = attn.to_q.out_features // attn.heads

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = torch.cat(
            [heads(attn.to_q(hidden_states)), heads(attn.add_q_proj(encoder_hidden_states))], 2
        )
        key = torch.cat(
            [heads(attn.to_k(hidden_states)), heads(attn.add_k_proj(encoder_hidden_states))], 2
        )
        value = torch.cat(
            [heads(attn.to_v(hidden_states)), heads(attn.add_v_proj(encoder_hidden_states))], 2
        )
        bias = torch.zeros(1, key.shape[2], dtype=query.dtype)
        bias[0, -1] = self.log_copies
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        image, context = out[:, :image_tokens], out[:, image_tokens:]
        if not attn.context_pre_only:
            context = attn.to_add_out(context)
        return attn.to_out[1](attn.to_out[0](image)), context


def encode_captions(pipe, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The transformer's context and pooled vector, as the pipeline builds them, T5 as one token."""
    first, pooled_first = pipe._get_clip_prompt_embeds(captions, clip_model_index=0)
    second, pooled_second = pipe._get_clip_prompt_embeds(captions, clip_model_index=1)
    silent = torch.zeros(len(captions), 1, components.JOINT_WIDTH)
    context = torch.cat([torch.cat([first, second], dim=-1), silent], dim=1)
    return context, torch.cat([pooled_first, pooled_second], dim=-1)


def training_caption(
    scene: scenes.Scene, rng: random.Random, plan: Plan, stage: Denoising
) -> tuple[str, frozenset[str]]:
    """A caption for training and the attributes it names."""
    if rng.random() < plan.empty_caption:
        return "", frozenset()
    text, named = stage.describe(scene, rng)
    if rng.random() < plan.stray_word:
        words = text.split()
        stray = "".join(rng.choices(string.ascii_lowercase, k=rng.randint(3, 8)))
        words.insert(rng.randint(0, len(words)), stray)
        text = " ".join(words)
    return text, named


# What a caption may name, by `Scene` field, and the values it may name.
FACTS: dict[str, tuple[str, ...]] = {
    "background": tuple(scenes.COLOURS),
    "colour": tuple(scenes.COLOURS),
    "shape": scenes.SHAPES,
    "position": tuple(scenes.POSITIONS),
    "size": tuple(scenes.SIZES),
}


class CaptionHeads(torch.nn.Module):
    """Training-only linear read-outs of the pooled caption vector, one per attribute, each
    telling its values and "not named" apart.

    Trained by the denoiser's loss alone, the text encoders of the shape-weighted autoencoder's
    runs never learnt which named colour is the background's, and the pictures swapped the two
    colours (background 87% right at best). A pooled vector these heads can read states every
    attribute apart: with them the same run drew colours 100% right and kinds 92%
    (docs/default-model.md).
    Not exported.
    """

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.ModuleDict(
            {name: torch.nn.Linear(width, len(values) + 1) for name, values in FACTS.items()}
        )
        # From zero, no random stream spent: a linear read-out learns from anywhere.
        for head in self.heads.values():
            torch.nn.init.zeros_(head.weight)
            torch.nn.init.zeros_(head.bias)

    def loss(
        self, pooled: torch.Tensor, told: list[tuple[scenes.Scene, frozenset[str]]]
    ) -> torch.Tensor:
        total = pooled.new_zeros(())
        for name, head in self.heads.items():
            values = FACTS[name]
            labels = [
                values.index(getattr(scene, name)) if name in named else len(values)
                for scene, named in told
            ]
            total = total + F.cross_entropy(head(pooled), torch.tensor(labels))
        return total


def flow_error(
    transformer, latents: torch.Tensor, context, pooled, noise_gen: torch.Generator
) -> torch.Tensor:
    """TRANSFORMER's squared error, per element, on the flow-matching velocity of LATENTS
    noised at logit-normal times (as SD3 trains: most weight on the middle of the path)."""
    sigmas = torch.sigmoid(torch.randn(latents.shape[0], generator=noise_gen))
    noise = torch.randn(latents.shape, generator=noise_gen)
    s = sigmas.view(-1, 1, 1, 1)
    prediction = transformer(
        hidden_states=(1 - s) * latents + s * noise,
        encoder_hidden_states=context,
        pooled_projections=pooled,
        timestep=sigmas * 1000,
    ).sample
    return (prediction - (noise - latents)) ** 2


def optimise(
    optimizer: torch.optim.Optimizer, params: list, loss: torch.Tensor, rate: float
) -> None:
    """One step of OPTIMIZER on LOSS at learning rate RATE, PARAMS' gradients clipped to norm 1."""
    for group in optimizer.param_groups:
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def _trained_modules(pipe) -> dict[str, torch.nn.Module]:
    return {
        "transformer": pipe.transformer,
        "text_encoder": pipe.text_encoder,
        "text_encoder_2": pipe.text_encoder_2,
    }


def train_denoiser(
    work: Path,
    pipe,
    pools: list[Pool],
    plan: Plan,
    stage: Denoising | None = None,
    base: str = "fresh weights",
) -> None:
    """Train STAGE (stage 4 unless given) from PIPE's weights, which BASE names: a checkpoint
    started from other weights is refused, not finished."""
    stage = stage or grammar_stage(plan)
    path = work / f"{stage.name}.pt"
    modules = _trained_modules(pipe)  # all checkpointed; STAGE.trains of them trained
    heads = CaptionHeads(pipe.transformer.config.pooled_projection_dim)
    heads_trained = plan.caption_heads > 0
    trained = [modules[name] for name in stage.trains] + ([heads] if heads_trained else [])
    for name, module in modules.items():
        module.requires_grad_(name in stage.trains)
    params = [p for m in trained for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=(0.9, 0.99), weight_decay=0.01)
    step = 0
    schedule = (stage.steps, stage.decay)
    decay_from = stage.steps - stage.decay
    if path.exists():
        state = torch.load(path, weights_only=False)
        step = state["step"]
        steps, decay = state.get("schedule", schedule)
        agreed = min(decay_from, steps - decay)  # the last step both schedules give one rate
        if (steps, decay) != schedule and step > agreed:
            kept = work / f"{stage.name}-{agreed}.pt"
            raise ValueError(
                f"{path} is at step {step} of a run of {steps} steps decaying over the last "
                f"{decay}; this plan ({stage.steps} steps, decaying over the last "
                f"{stage.decay}) sets other rates after step {agreed}. Continue from "
                f"a checkpoint taken at or before step {agreed}"
                + (f": copy {kept} over it." if agreed == steps - decay else ".")
            )
        if state.get("base", base) != base:
            raise ValueError(
                f"{path} continues {state['base']}, not {base}: delete it (and its "
                f"{stage.name}-*.pt) to train the {stage.name} stage on from {base}."
            )
        had, wants = ("with" if yes else "without" for yes in ("heads" in state, heads_trained))
        if had != wants:
            raise ValueError(
                f"{path} was trained {had} caption heads, this plan trains {wants}: delete it "
                f"(and its {stage.name}-*.pt) to train the {stage.name} stage afresh."
            )
        for name, module in modules.items():
            module.load_state_dict(state["model"][name])
        if "heads" in state:
            heads.load_state_dict(state["heads"])
        optimizer.load_state_dict(state["optimizer"])
    pipe.transformer.set_attn_processor(SilentT5Attention(components.T5_TOKENS))
    for module in modules.values():
        module.train()
    bar = tqdm(total=stage.steps, initial=step, desc=stage.name, unit="step")
    started, losses = time.monotonic(), []
    while step < stage.steps:
        rng = _rng(stage.name, step)
        pool = rng.choices(pools, weights=plan.pool_weights)[0]
        picks = [rng.randrange(len(pool.scenes)) for _ in range(pool.batch)]
        latents = pool.latents[picks]
        told = [training_caption(pool.scenes[i], rng, plan, stage) for i in picks]
        captions = [text for text, _ in told]
        context, pooled = encode_captions(pipe, captions)
        noise_gen = _generator(f"{stage.name}-noise", step)
        error = flow_error(pipe.transformer, latents, context, pooled, noise_gen)
        if step >= decay_from:
            weight = 1 + (plan.decay_shape_weight - 1) * pool.shapes[picks]
            loss = (error * weight).sum() / (weight.sum() * error.shape[1])
        else:
            loss = error.mean()
        if heads_trained:
            facts = [(pool.scenes[i], named) for i, (_, named) in zip(picks, told, strict=True)]
            loss = loss + plan.caption_heads * heads.loss(pooled, facts)
        rate = stage.lr * min(1.0, (step + 1) / stage.warmup, (stage.steps - step) / stage.decay)
        optimise(optimizer, params, loss, rate)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if step % plan.checkpoint_every == 0 or step in (decay_from, stage.steps):
            state = {
                "model": {n: m.state_dict() for n, m in modules.items()},
                **({"heads": heads.state_dict()} if heads_trained else {}),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "schedule": schedule,
                "base": base,
                "seconds": time.monotonic() - started,
            }
            _save(path, state)
            if step == decay_from:
                # A longer plan decays later, so it can only continue from here.
                _save(work / f"{stage.name}-{step}.pt", state)
    bar.close()


def trained_pipeline(work: Path, vae, stage: str = "phrasing"):
    """The pipeline with the weights of STAGE's latest checkpoint.

    Not an average of recent weights (EMA): at the end of a long decay to a zero rate the
    weights have settled, and an EMA over the last 1,000 steps drew worse (docs/default-model.md).
    """
    pipe = fresh_pipeline(vae) if stage == "denoiser" else taught_phrasings(fresh_pipeline(vae))
    state = torch.load(work / f"{stage}.pt", weights_only=False)
    for name, module in _trained_modules(pipe).items():
        module.load_state_dict(state["model"][name])
    return pipe, state["step"]


def fresh_pipeline(vae):
    torch.manual_seed(SEED + 1)
    tokenizer = components.clip_tokenizer(scenes.vocabulary())
    encoders = (components.clip_encoder(tokenizer), components.clip_encoder(tokenizer))
    return components.pipeline(vae, components.transformer(), encoders, (scenes.vocabulary(),))


def taught_phrasings(pipe):
    """PIPE (stage 4's) with tokenizers that know `captions.added_words` too. A grammar caption
    encodes as before; the new words' embeddings start as the unknown token's (stage 4 read
    them as pieces of its own words, or as unknown)."""
    words = (scenes.vocabulary(), captions.added_words())
    wider = components.pipeline(
        pipe.vae, pipe.transformer, (pipe.text_encoder, pipe.text_encoder_2), words
    )
    unknown = wider.tokenizer.unk_token_id
    for encoder in (wider.text_encoder, wider.text_encoder_2):
        known = encoder.get_input_embeddings().num_embeddings
        encoder.resize_token_embeddings(len(wider.tokenizer))
        with torch.no_grad():
            table = encoder.get_input_embeddings().weight
            table[known:] = table[unknown]
    return wider


def unpacked(model: Path):
    """Stages 1 to 4 as exported into MODEL: its autoencoder and stage-4 pipeline, narrowed back
    to the 8 channels they were trained in (see `channels`)."""
    from diffusers import DiffusionPipeline

    shipped = DiffusionPipeline.from_pretrained(model)
    if len(shipped.tokenizer) != len(components.clip_tokenizer(scenes.vocabulary())):
        raise ValueError(
            f"{model} already knows words beyond the training grammar: it is not a stage-4 "
            "export. Start from the export of a run without stage 5, or train from scratch."
        )
    vae = channels.narrow_autoencoder(shipped.vae)
    encoders = (shipped.text_encoder, shipped.text_encoder_2)
    denoiser = channels.narrow_transformer(shipped.transformer)
    return vae, components.pipeline(vae, denoiser, encoders, (scenes.vocabulary(),))


# The autoencoder of the export a run started from (`train`'s START), for `export`.
STARTED_FROM = "started-from-vae.pt"


def load_autoencoder(work: Path, stage: str = "autoencoder"):
    vae = components.autoencoder()
    vae.load_state_dict(torch.load(work / f"{stage}.pt", weights_only=False)["model"])
    return vae.eval().requires_grad_(False)


def _latent_space(work: Path, plan: Plan):
    if (work / STARTED_FROM).exists():
        vae = components.autoencoder()
        state = torch.load(work / STARTED_FROM, weights_only=False)
        vae.register_to_config(**state["config"])
        vae.load_state_dict(state["model"])
        return vae.eval().requires_grad_(False)
    vae = load_autoencoder(work, "decoder" if (work / "decoder.pt").exists() else "autoencoder")
    # The balance and the statistics are the encoder's, which the decoder stage leaves exactly
    # as it was.
    fix_latent_space(vae, plan)
    return vae


def train(work: Path, plan: Plan, start: Path | None = None) -> None:
    """Train every stage, resuming from WORK's checkpoints; with START, a stage-4 export,
    stages 1 to 4 are START's and only the pools and stage 5 run."""
    torch.set_num_threads(plan.threads)
    work.mkdir(parents=True, exist_ok=True)
    if start is None:
        vae = train_autoencoder(work, plan)
        refine_decoder(work, vae, plan)
        fix_latent_space(vae, plan)
        pools = build_pools(work, vae, plan)
        train_denoiser(work, fresh_pipeline(vae), pools, plan)
        stage4, step = trained_pipeline(work, vae, "denoiser")
        base = f"denoiser.pt at step {step} of {grammar_stage(plan).steps}"
    else:
        vae, stage4 = unpacked(start)
        config = {k: vae.config[k] for k in ("shift_factor", "scaling_factor")}
        _save(work / STARTED_FROM, {"model": vae.state_dict(), "config": config})
        pools = build_pools(work, vae, plan)
        base = f"the export in {start}"
    train_denoiser(work, taught_phrasings(stage4), pools, plan, phrasing_stage(plan), base)


def export(work: Path, out: Path, plan: Plan) -> int:
    """Save the trained weights as a diffusers folder; returns the stage-5 step they are from.

    The folder carries the latents in 16 channels, which SD3 inpainting needs (see `channels`),
    and the serving defaults the runtime reads (`serving.json`, see `serving`).
    """
    pipe, step = trained_pipeline(work, _latent_space(work, plan))
    channels.widen(pipe)
    pipe.save_pretrained(out, safe_serialization=True)
    serving.write_serving_file(out)
    return step
