"""Preference pairs for DPO on the Shapes world: a faithful response (chosen) against a
hallucinated one (rejected), in the trl / RLAIF-V convention `{prompt, image, chosen, rejected}`.

Per image: the true caption against the caption with one object recoloured or replaced by an
object the image does not contain, and an existence question about an absent object ("no"
against a hallucinated "yes"). To keep answers balanced, an existence question about a
present object ("yes" against an omission "no") is added too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data.shapes import CAPTION_PROMPT, Scene, World, caption, existence_question


def hallucinated_scene(scene: Scene, world: World, rng: np.random.Generator) -> Scene:
    """The scene with one object changed into something absent from the image: a colour no
    object has (when one exists), else a colour+shape combination that is not present."""
    k = int(rng.integers(len(scene.objects)))
    obj = scene.objects[k]
    absent_colors = [c for c in world.colors if c not in {o.color for o in scene.objects}]
    if absent_colors and rng.random() < 0.5:
        new = dataclasses.replace(obj, color=absent_colors[int(rng.integers(len(absent_colors)))])
    else:
        absent = [n for n in world.objects if n not in scene.names]
        color, shape = absent[int(rng.integers(len(absent)))].split(" ")
        new = dataclasses.replace(obj, color=color, shape=shape)
    return Scene(tuple(new if i == k else o for i, o in enumerate(scene.objects)))


def preference_pairs(scene: Scene, world: World, rng: np.random.Generator) -> list[dict]:
    present = sorted(scene.names)
    absent = [n for n in world.objects if n not in scene.names]
    pairs = [{"prompt": CAPTION_PROMPT, "chosen": caption(scene),
              "rejected": caption(hallucinated_scene(scene, world, rng)), "type": "caption"}]
    if absent:
        name = absent[int(rng.integers(len(absent)))]
        pairs.append({"prompt": existence_question(name), "chosen": "no", "rejected": "yes", "type": "absent"})
    name = present[int(rng.integers(len(present)))]
    pairs.append({"prompt": existence_question(name), "chosen": "yes", "rejected": "no", "type": "present"})
    return pairs
