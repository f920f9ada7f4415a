"""The scene language: captions, held-out combinations, and reading pictures back."""

from __future__ import annotations

import random

import pytest

from scene_model import analysis, components, scenes


def test_captions_use_only_vocabulary_words_and_every_attribute_is_optional():
    rng = random.Random(1)
    vocabulary = set(scenes.vocabulary())
    left_out = dict.fromkeys(("colour", "background", "size"), 0)
    for _ in range(2000):
        scene = scenes.random_scene(rng)
        text = scenes.caption(scene, rng)
        assert set(text.replace(",", " , ").split()) <= vocabulary, text
        left_out["colour"] += scene.colour not in text.split()
        left_out["background"] += "background" not in text and scene.background not in text
        left_out["size"] += not any(w in text.split() for w in scenes.SIZE_WORDS[scene.size])
    assert all(count > 100 for count in left_out.values()), left_out


def test_a_caption_says_which_attributes_it_names():
    rng = random.Random(2)
    for _ in range(500):
        scene = scenes.random_scene(rng)
        text, named = scenes.described(scene, rng)
        words = text.replace(",", " , ").split()
        # The two colours always differ, so each colour word tells which attribute is named.
        said = {
            "colour": scene.colour in words,
            "background": scene.background in words,
            "shape": "shape" not in words,
            "size": any(word in words for word in scenes.SIZE_WORDS[scene.size]),
            "position": any(phrase in text for phrase in scenes.POSITION_PHRASES[scene.position]),
        }
        assert named == {name for name, yes in said.items() if yes}, text


def test_the_plain_caption_names_every_attribute_or_leaves_the_place_free():
    scene = scenes.Scene("star", "red", "blue", "top left", "small")
    assert scenes.full_caption(scene) == (
        "a small red star in the top left corner on a blue background"
    )
    assert scenes.full_caption(scene, place=False) == "a small red star on a blue background"


def test_every_vocabulary_word_is_one_clip_token_and_unknown_words_do_not_end_the_prompt():
    tokenizer = components.clip_tokenizer(scenes.vocabulary())
    for word in scenes.vocabulary():
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a red zebra on a blue background").input_ids
    # CLIP pools at the first end token: an unknown word must not be one.
    assert ids.count(tokenizer.eos_token_id) == 1
    assert ids[-1] == tokenizer.eos_token_id


def test_held_out_combinations_never_reach_training():
    held_out = scenes.held_out_combos()
    assert len(held_out) >= 250
    rng = random.Random(2)
    assert not {scenes.random_scene(rng, held_out).combo for _ in range(20000)} & held_out


@pytest.mark.parametrize("size", [64, 128, 256])
def test_analysis_reads_drawn_scenes_exactly(size):
    rng = random.Random(size)
    for _ in range(60):
        scene = scenes.random_scene(rng)
        reading = analysis.read(scenes.render(scene, size))
        assert all(reading.matches(scene).values()), (scene, reading)


def test_analysis_of_a_plain_picture_finds_no_shape():
    picture = scenes.render(scenes.Scene("circle", "red", "blue", "center", "small"), 64)
    picture.paste((30, 60, 220), (0, 0, 64, 64))
    reading = analysis.read(picture)
    assert (reading.background, reading.shape) == ("blue", None)
