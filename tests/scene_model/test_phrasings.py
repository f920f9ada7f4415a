"""The held-out phrasings: each names all five attributes, and the measurement scores them as
the evaluation does (here on true renders, so every attribute is right)."""

from __future__ import annotations

from types import SimpleNamespace

from scene_model import evaluation, phrasings, scenes


def test_every_family_names_every_attribute_and_grammar_is_the_plain_caption():
    chosen = evaluation.evaluation_scenes(20)
    assert phrasings.prompts_for(phrasings.GRAMMAR, chosen) == [
        scenes.full_caption(s) for s in chosen
    ]
    for family in phrasings.FAMILIES:
        prompts = phrasings.prompts_for(family, chosen)
        assert prompts == phrasings.prompts_for(family, chosen)  # a fixed draw
        for scene, prompt in zip(chosen, prompts, strict=True):
            said = prompt.lower()
            for word in (scene.size, scene.colour, scene.shape, scene.background):
                assert word in said, (family, prompt)
            assert scene.position.split()[-1] in said, (family, prompt)
        if family != phrasings.GRAMMAR:
            assert not set(prompts) & {scenes.full_caption(s) for s in chosen}


def test_the_measurement_scores_each_family_on_the_same_scenes():
    chosen = evaluation.evaluation_scenes(6)
    wanted = {
        prompt: scene
        for family in [phrasings.SEEN, *phrasings.FAMILIES]
        for scene, prompt in zip(chosen, phrasings.prompts_for(family, chosen), strict=True)
    }

    def pipe(prompts, height, width, **_):
        return SimpleNamespace(images=[scenes.render(wanted[p], width) for p in prompts])

    pipe.set_progress_bar_config = lambda **_: None
    report = phrasings.evaluate_phrasings(pipe, count=6, size=64)
    assert set(report.accuracy) == {phrasings.SEEN, *phrasings.FAMILIES}
    for scores in report.accuracy.values():
        assert all(scores[name] == 1.0 for name in [*evaluation.TARGETS, "all"])
        # True renders: only the anti-aliased rim is neither colour.
        assert scores["clean"] > 0.95
    assert "| filler |" in report.markdown()
