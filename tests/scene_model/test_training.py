"""Training stops and resumes at any checkpoint exactly as if it had never stopped, and never
resumes another recipe's; the decay weights the latents where the shape lies; balancing the
channels changes no picture; the caption heads read what a caption names."""

from __future__ import annotations

import dataclasses
import random
import shutil
from pathlib import Path

import pytest
import torch

from scene_model import channels, components, scenes, training

TINY = training.Plan(
    autoencoder=training.Reconstruction("autoencoder", 4, 2, 32, 1e-3),
    decoder=training.Reconstruction("decoder", 2, 2, 32, 1e-3),
    pools=((32, 8, 4),),
    pool_weights=(1.0,),
    denoiser_steps=4,
    denoiser_decay=2,
    warmup=2,
    phrasing_steps=4,
    phrasing_decay=2,
    phrasing_warmup=2,
    statistics_pictures=8,
    checkpoint_every=2,
)


class Stopped(Exception):
    pass


def _weights(work: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name in ("autoencoder", "decoder", "denoiser", "phrasing"):
        state = torch.load(work / f"{name}.pt", weights_only=False)
        models = (
            state["model"]
            if name in ("autoencoder", "decoder")
            else state["model"]["text_encoder"] | state["model"]["transformer"]
        )
        found.update({f"{name}.{k}": v for k, v in models.items()})
    return found


# Without the parts of the recipe that only training sees: channels as the autoencoder left
# them, no caption heads.
PLAIN = dataclasses.replace(TINY, balanced_channels=False, caption_heads=0.0)


@pytest.mark.parametrize("plan", [TINY, PLAIN], ids=["recipe", "plain"])
def test_a_stopped_run_resumes_to_the_same_weights(tmp_path, monkeypatch, plan):
    straight = tmp_path / "straight"
    training.train(straight, plan)

    save = training._save
    saves = {"left": 0}

    def save_then_stop(path: Path, state: dict) -> None:
        save(path, state)
        saves["left"] -= 1
        if saves["left"] == 0:
            raise Stopped(path.name)

    monkeypatch.setattr(training, "_save", save_then_stop)
    resumed = tmp_path / "resumed"
    # Stop after the autoencoder's first checkpoint, in the middle of the denoiser, then in the
    # middle of stage 5.
    for stop_after in (1, 3, 4):
        saves["left"] = stop_after
        with pytest.raises(Stopped):
            training.train(resumed, plan)
    saves["left"] = -1
    training.train(resumed, plan)

    expected, found = _weights(straight), _weights(resumed)
    assert expected.keys() == found.keys()
    for key, value in expected.items():
        assert torch.equal(value, found[key]), key


def test_a_longer_plan_continues_only_from_where_the_decay_began(tmp_path):
    longer = dataclasses.replace(TINY, denoiser_steps=6)
    straight = tmp_path / "straight"
    training.train(straight, longer)

    extended = tmp_path / "extended"
    training.train(extended, TINY)
    # Its rate already fell over steps 2-4: continuing would not be the longer plan's run.
    with pytest.raises(ValueError, match=r"denoiser-2\.pt"):
        training.train(extended, longer)
    shutil.copy(extended / "denoiser-2.pt", extended / "denoiser.pt")
    # Stage 5 went on from the shorter stage 4: it is refused, not kept.
    with pytest.raises(ValueError, match=r"phrasing\.pt continues denoiser\.pt at step 4 of 4"):
        training.train(extended, longer)
    (extended / "phrasing.pt").unlink()
    training.train(extended, longer)

    expected, found = _weights(straight), _weights(extended)
    for key, value in expected.items():
        assert torch.equal(value, found[key]), key


def test_the_shape_mask_covers_the_shapes_latents_and_one_pixel_around_them():
    # A small square in the centre of 128 px spans pixels 49-79: latents 6-9 of 16, 8 px each.
    square = scenes.Scene("square", "red", "blue", "center", "small")
    mask = training.shape_masks([square], 128)[0, 0]
    expected = torch.zeros(16, 16)
    expected[5:11, 5:11] = 1
    assert torch.equal(mask, expected)
    # At 64 px the same square covers 2x2 of 8x8 latents; with its rim, 4x4.
    assert training.shape_masks([square], 64)[0, 0].sum() == 16


def test_a_changed_recipe_refuses_the_old_checkpoints(tmp_path):
    training.train(tmp_path, TINY)
    weighted = training.Reconstruction("autoencoder", 4, 2, 32, 1e-3, shape_weight=1.0)
    with pytest.raises(ValueError, match=r"autoencoder\.pt was trained by .*shape_weight': 0\.0"):
        training.train(tmp_path, dataclasses.replace(TINY, autoencoder=weighted))
    with pytest.raises(ValueError, match=r"denoiser\.pt was trained with caption heads"):
        training.train(tmp_path, dataclasses.replace(TINY, caption_heads=0.0))


def test_balanced_channels_spread_alike_and_decode_the_same_pictures():
    torch.manual_seed(0)
    vae = components.autoencoder().eval().requires_grad_(False)
    rng = random.Random(0)
    pictures = training.to_tensor([scenes.render(scenes.random_scene(rng), 64) for _ in range(4)])
    posterior = vae.encode(pictures).latent_dist
    before = vae.decode(posterior.mean).sample
    training.balance_channels(vae, TINY)
    balanced = vae.encode(pictures).latent_dist
    assert torch.allclose(vae.decode(balanced.mean).sample, before, atol=1e-4)
    # A channel's sampling noise scales with its mean: img2img samples the latents.
    gain = balanced.mean[0, :, 0, 0] / posterior.mean[0, :, 0, 0]
    assert torch.allclose(balanced.std[0, :, 0, 0] / posterior.std[0, :, 0, 0], gain, rtol=1e-3)
    spreads = training._statistics_latents(vae, TINY).std(dim=(0, 2, 3))
    assert torch.allclose(spreads, torch.ones_like(spreads), atol=1e-4)


def test_the_caption_heads_read_what_a_caption_names_and_nothing_else():
    heads = training.CaptionHeads(4)
    scene = scenes.Scene("ring", "red", "blue", "top", "large")
    named = frozenset({"shape", "colour"})
    # Every head's weights are zero: its bias alone answers. Raised on the named value (or on
    # "not named", last), a caption naming just the shape and its colour costs almost nothing.
    for name, head in heads.heads.items():
        values = training.FACTS[name]
        head.bias.data[values.index(getattr(scene, name)) if name in named else len(values)] = 20
    pooled = torch.zeros(1, 4)
    assert heads.loss(pooled, [(scene, named)]) < 1e-6
    assert heads.loss(pooled, [(scene, frozenset({"shape"}))]) > 10


def test_stage_five_starts_from_an_export_and_draws_what_stage_four_drew(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    training.train(work, TINY)
    pipe, _ = training.trained_pipeline(work, training._latent_space(work, TINY), "denoiser")
    channels.widen(pipe)
    pipe.save_pretrained(out)
    _, stage4 = training.unpacked(out)
    taught = training.taught_phrasings(stage4)
    # A grammar caption encodes as before; the new words are words now, and start as unknown.
    caption = ["a small red circle on a blue background"]
    before, pooled_before = training.encode_captions(stage4, caption)
    after, pooled_after = training.encode_captions(taught, caption)
    assert torch.allclose(before, after, atol=1e-5)
    assert torch.allclose(pooled_before, pooled_after, atol=1e-5)
    table = taught.text_encoder.get_input_embeddings().weight
    for word in ("image", "against"):
        (token,) = taught.tokenizer(word, add_special_tokens=False).input_ids
        assert torch.equal(table[token], table[taught.tokenizer.unk_token_id])

    again = tmp_path / "again"
    training.train(again, TINY, start=out)
    # Stage 5 teaches the text encoders; the denoiser stays stage 4's, exactly.
    taught_state = torch.load(again / "phrasing.pt", weights_only=False)["model"]
    for key, value in stage4.transformer.state_dict().items():
        assert torch.equal(taught_state["transformer"][key], value), key
    encoder = taught_state["text_encoder"]["text_model.final_layer_norm.weight"]
    assert not torch.equal(encoder, stage4.text_encoder.text_model.final_layer_norm.weight)
    training.export(again, tmp_path / "phrased", TINY)
    with pytest.raises(ValueError, match="not a stage-4 export"):
        training.unpacked(tmp_path / "phrased")
