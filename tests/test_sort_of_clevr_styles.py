"""Sort-of-CLEVR rendering styles: paper pixels unchanged, other styles change pixels only."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data.sort_of_clevr import (
    COLORS,
    STYLES,
    Obj,
    RenderStyle,
    Scene,
    ask,
    coverage,
    render,
    sample_scene,
    sample_style,
    write_sort_of_clevr,
)
from data.writers import stream_rng
from tests.cli_run import chimera, plain_error

WHITE = (255, 255, 255)
PALETTE = set(COLORS.values()) | {WHITE}

# Computed with the generator before rendering styles existed (commit db7abe0).
RENDER50_SEED7 = "30e45546693a8474c50fee5adcd1a667f0c97a3e2c0b804ec9ff90057fa4fdff"
PLAIN_WORLD = "1ea54ee8abc057ffae28e6c52a9124d1121478048feb4a66deb833cb04966d46"
SHARDS_CAPTIONS_WORLD = "781c83b020145d12eea8057eb7d2546ff3d6dc9c5bd9ce1b7c5e69269ebabb29"

# red square (10,10), green circle (30,10), blue circle (60,60), orange square (40,50), gray square (10,60),
# yellow square (65,20)
HAND = Scene(tuple(Obj(c, s, x, y) for c, (s, x, y) in zip(COLORS, [
    ("square", 10, 10), ("circle", 30, 10), ("circle", 60, 60), ("square", 40, 50), ("square", 10, 60),
    ("square", 65, 20)])))


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(b"\0")
            h.update(p.read_bytes())
    return h.hexdigest()


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def small(out: Path, **kwargs) -> dict:
    return write_sort_of_clevr(out, train_images=4, val_images=3, seed=0, questions_per_image=2, **kwargs)


def scenes(seed: int, split: str, n: int, n_q: int = 2) -> list[Scene]:
    """Replay a split's scene stream (scene, questions, shuffle per image)."""
    rng, out = stream_rng(seed, split), []
    for _ in range(n):
        out.append(sample_scene(rng))
        rng.permutation(len(ask(out[-1], rng, n_q, n_q)))
    return out


def test_paper_style_is_byte_identical_to_before(tmp_path):
    rng, h = stream_rng(7, "train"), hashlib.sha256()
    for _ in range(50):
        h.update(render(sample_scene(rng), STYLES["paper"]).tobytes())
    assert h.hexdigest() == RENDER50_SEED7
    small(tmp_path / "default")
    small(tmp_path / "named", style="paper", val_style="paper", augment=False)
    assert tree_hash(tmp_path / "default") == tree_hash(tmp_path / "named") == PLAIN_WORLD
    write_sort_of_clevr(tmp_path / "sc", train_images=3, val_images=2, seed=5, questions_per_image=1, shards=True,
                        shard_size=2, captions=True, style="paper")
    assert tree_hash(tmp_path / "sc") == SHARDS_CAPTIONS_WORLD


def test_styles_change_pixels_only(tmp_path):
    small(tmp_path / "paper")
    small(tmp_path / "soft", style="soft", val_style="antialiased")
    small(tmp_path / "aug", augment=True, val_style="noisy")
    paper, soft, aug = files(tmp_path / "paper"), files(tmp_path / "soft"), files(tmp_path / "aug")
    for other in (soft, aug):
        images = [k for k in paper if k.startswith("images/")]
        assert [k for k in other if k.startswith("images/")] == images
        assert all(other[k] != paper[k] for k in images)  # every image is redrawn ...
        rest = [k for k in paper if not k.startswith("images/") and k != "meta.json"]
        assert rest and all(other[k] == paper[k] for k in rest)  # ... questions, answers, tokenizer are not
    assert set(aug) - set(paper) == {"train_styles.jsonl"} and set(soft) == set(paper)


def test_hard_edges_are_palette_colours_antialiased_edges_blend_with_white():
    for name in ("paper", "small"):
        img = render(HAND, STYLES[name])
        assert {tuple(p) for p in img.reshape(-1, 3)} <= PALETTE
    img = render(HAND, STYLES["antialiased"])
    # red square centred at (x=10, y=10), half-side 5: an edge pixel is half covered, a corner a quarter
    assert tuple(img[10, 10]) == (255, 0, 0)
    assert tuple(img[10, 15]) == tuple(img[5, 10]) == (255, 128, 128)  # rint(255 * 0.5) = 128
    assert tuple(img[15, 15]) == tuple(img[5, 5]) == (255, 191, 191)  # rint(255 * 0.75) = 191
    assert tuple(img[10, 16]) == WHITE
    # green circle at (30, 10), radius 5: at dx = 5 the samples x = 4.625, 4.875 are inside, 5.125, 5.375 not
    assert tuple(img[10, 35]) == (128, 255, 128) and tuple(img[10, 30]) == (0, 255, 0)
    off = [tuple(p) for p in img.reshape(-1, 3) if tuple(p) not in PALETTE]
    assert len(off) > 6 * 20  # every object has a blended rim
    red_box = img[5:16, 5:16].reshape(-1, 3).astype(int)  # blends of red and white: R = 255, G = B
    assert np.all(red_box[:, 0] == 255) and np.array_equal(red_box[:, 1], red_box[:, 2])
    assert set(red_box[:, 1].tolist()) == {0, 128, 191}  # inside, edge, corner


def clipped_normal_moments(mean: float, sigma: float) -> tuple[float, float]:
    """Mean and std of min(255, rint(mean + N(0, sigma^2))) for mean = 255 (the white background)."""
    phi = lambda z: 0.5 * (1.0 + math.erf(z / (sigma * math.sqrt(2.0))))  # noqa: E731
    probs = {0: 1.0 - phi(-0.5)} | {k: phi(-k + 0.5) - phi(-k - 0.5) for k in range(1, int(12 * sigma))}
    m = sum(p * (mean - k) for k, p in probs.items())
    var = sum(p * (mean - k - m) ** 2 for k, p in probs.items())
    return m, math.sqrt(var)


def test_noise_has_the_requested_std():
    sigma = STYLES["noisy"].color_noise
    assert sigma == 6.0
    rng = np.random.default_rng(0)
    imgs = np.stack([render(HAND, STYLES["noisy"], rng) for _ in range(10)]).astype(float)
    clean = render(HAND, STYLES["paper"])
    background = imgs[:, np.all(clean == WHITE, axis=-1)]
    gray = imgs[:, 55:66, 5:16]  # gray square at (10, 60): 128 +- noise, never clipped
    assert abs(gray.mean() - 128) < 0.3 and abs(gray.std() - math.sqrt(sigma**2 + 1 / 12)) < 0.2
    # white background: noise above 255 is clipped, so its std is that of a one-sided normal
    mean, std = clipped_normal_moments(255.0, sigma)
    assert abs(mean - (255 - sigma / math.sqrt(2 * math.pi))) < 0.1  # the continuous formula, for orientation
    assert abs(background.mean() - mean) < 0.05 and abs(background.std() - std) < 0.05
    state = rng.bit_generator.state
    render(HAND, STYLES["paper"], rng)
    assert rng.bit_generator.state == state  # a noise-free style draws nothing
    with pytest.raises(ValueError, match="rng"):
        render(HAND, STYLES["noisy"])


def pixel_area(img: np.ndarray, obj: Obj, channel: int) -> float:
    """Covered area of `obj` from its pixels: the channel its colour has at 0 goes 255 -> 0."""
    box = img[obj.cy - 6 : obj.cy + 7, obj.cx - 6 : obj.cx + 7, channel].astype(float)
    return float(((255.0 - box) / 255.0).sum())


@pytest.mark.parametrize("name", list(STYLES))
def test_circles_and_squares_keep_their_areas(name):
    style = STYLES[name]
    img = render(HAND, style, np.random.default_rng(1))
    red_square, green_circle = HAND.objects[0], HAND.objects[1]
    square, circle = pixel_area(img, red_square, 1), pixel_area(img, green_circle, 0)
    s = style.object_size
    if style.antialias:  # area averages of a disc of radius s and a square of side 2s: ratio pi/4
        assert abs(square - 4 * s * s) < (1.0 if style.color_noise else 0.1)  # 0.1: pixels are rounded
        assert abs(circle / square - math.pi / 4) < (0.03 if style.color_noise else 0.015)
    else:  # pixel centres inside: (2s+1)^2 and the lattice points with x^2 + y^2 <= s^2
        lattice = {4: 49, 5: 81}[s]
        assert coverage("circle", style).sum() == lattice and coverage("square", style).sum() == (2 * s + 1) ** 2
        tol = 1.0 if style.color_noise else 1e-9
        assert abs(square - (2 * s + 1) ** 2) < tol and abs(circle - lattice) < tol
    assert 0.55 < circle / square < 0.82  # a circle is always clearly smaller than the square around it


def test_augment_draws_a_style_per_training_image_and_val_in_val_style(tmp_path):
    summary = write_sort_of_clevr(tmp_path, train_images=12, val_images=3, questions_per_image=1, augment=True,
                                  val_style="soft")
    recorded = [json.loads(line) for line in Path(summary["train_styles"]).read_text().splitlines()]
    assert [r["image"] for r in recorded] == [f"images/train/{i:06d}.png" for i in range(12)]
    assert {r["antialias"] for r in recorded} == {False, True} and {r["object_size"] for r in recorded} == {4, 5}
    noise = [r["color_noise"] for r in recorded]
    assert all(0 <= v <= 8 for v in noise) and len(set(noise)) == 12
    render_rng = stream_rng(0, "render-train")  # replay: each image is its scene in its recorded style
    for i, (s, rec) in enumerate(zip(scenes(0, "train", 12, 1), recorded)):
        style = sample_style(render_rng)
        assert rec == {"image": rec["image"], **style.to_json()}
        assert np.array_equal(np.asarray(Image.open(tmp_path / rec["image"])), render(s, style, render_rng)), i
    render_rng = stream_rng(0, "render-val")
    for i, s in enumerate(scenes(0, "val", 3, 1)):
        img = np.asarray(Image.open(tmp_path / f"images/val/{i:06d}.png"))
        assert np.array_equal(img, render(s, STYLES["soft"], render_rng))
    params = json.loads((tmp_path / "meta.json").read_text())["params"]
    assert params["style"] == {"name": "paper", "object_size": 5, "antialias": False, "color_noise": 0.0}
    assert params["val_style"] == {"name": "soft", "object_size": 4, "antialias": True, "color_noise": 6.0}
    assert params["augment"] == {"object_size": [4, 5], "antialias": [False, True], "color_noise": [0.0, 8.0]}


def test_val_style_defaults_to_style(tmp_path, capsys):
    from train.cli import main

    main(["data", "sort-of-clevr", "--out", str(tmp_path), "--train-images", "2", "--val-images", "2",
          "--questions-per-image", "1", "--style", "small"])
    params = json.loads((tmp_path / "meta.json").read_text())["params"]
    assert params["style"]["name"] == params["val_style"]["name"] == "small" and params["augment"] is False
    assert "train_styles" not in json.loads(capsys.readouterr().out)
    render_rng = stream_rng(0, "render-val")
    for i, s in enumerate(scenes(0, "val", 2, 1)):
        assert np.array_equal(np.asarray(Image.open(tmp_path / f"images/val/{i:06d}.png")),
                              render(s, STYLES["small"], render_rng))


@pytest.mark.parametrize("flag, arg", [("--style", "style"), ("--val-style", "val_style")])
def test_cli_names_a_bad_style_and_the_choices(tmp_path, flag, arg):
    proc = chimera("data", "sort-of-clevr", "--out", tmp_path / "out", "--train-images", "1", "--val-images", "1",
                   flag, "sofft")
    assert plain_error(proc, "data") == f"{arg} must be one of paper, soft, small, antialiased, noisy; got 'sofft'"
    assert not (tmp_path / "out").exists()  # checked before anything is written


@pytest.mark.parametrize(
    "kwargs, name",
    [({"object_size": 3}, "object_size"), ({"object_size": 6}, "object_size"), ({"object_size": True}, "object_size"),
     ({"antialias": 1}, "antialias"), ({"color_noise": -1.0}, "color_noise"), ({"color_noise": "6"}, "color_noise")],
)
def test_render_style_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RenderStyle(**kwargs)


def test_write_rejects_a_non_boolean_augment(tmp_path):
    with pytest.raises(ValueError, match="augment"):
        write_sort_of_clevr(tmp_path, train_images=1, val_images=1, augment="yes")


@pytest.mark.parametrize("name", ["paper", "antialiased"])
def test_objects_at_the_border_are_cut_not_wrapped(name):
    corner = Scene((Obj("red", "square", 0, 0), Obj("green", "square", 74, 74)))
    img = render(corner, STYLES[name])
    red = (img[..., 1] < 255) & (img[..., 0] == 255) & (img[..., 2] < 255)
    green = (img[..., 1] == 255) & (img[..., 0] < 255) & (img[..., 2] < 255)
    assert red.sum() == green.sum() == 36 and red[:6, :6].all() and green[69:, 69:].all()  # 6x6 in-image quarter
