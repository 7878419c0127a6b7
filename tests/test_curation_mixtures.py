"""Mixtures: realised source proportions, temperature sampling, determinism and exact resumption."""

import io
import itertools
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data.curation.mixtures import MixtureStream, mixture_probabilities, stream_from_manifest
from data.curation.shards import write_shard


def _sources():
    return {"a": [[("a", i) for i in range(0, 60)], [("a", i) for i in range(60, 100)]],
            "b": [[("b", i) for i in range(50)]],
            "c": [[("c", i) for i in range(5)], [("c", i) for i in range(5, 10)]]}


def test_probabilities_weights_and_temperature():
    assert mixture_probabilities(weights={"a": 3, "b": 1}) == {"a": 0.75, "b": 0.25}
    assert mixture_probabilities(sizes={"a": 900, "b": 100}) == pytest.approx({"a": 0.9, "b": 0.1})
    # T=2: p ~ sqrt(n): 30 : 10
    assert mixture_probabilities(sizes={"a": 900, "b": 100}, temperature=2) == pytest.approx({"a": 0.75, "b": 0.25})
    assert mixture_probabilities(sizes={"a": 900, "b": 100}, temperature=1e9) == pytest.approx({"a": 0.5, "b": 0.5})
    with pytest.raises(ValueError, match="weights"):
        mixture_probabilities(weights={"a": -1, "b": 1})


def test_realised_proportions_match_weights():
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    taken = list(MixtureStream(_sources(), weights=weights, seed=0, num_samples=5000))
    counts = Counter(name for name, _ in taken)
    for k, w in weights.items():
        assert abs(counts[k] / 5000 - w) < 0.02, (k, counts)
    # a small source is cycled: epochs in fresh shard orders, every sample once per epoch
    cs = [i for name, i in taken if name == "c"]
    assert sorted(cs[:10]) == list(range(10)) and sorted(cs[10:20]) == list(range(10))
    t = list(MixtureStream(_sources(), temperature=2.0, seed=0, num_samples=5000))
    p = mixture_probabilities(sizes={"a": 100, "b": 50, "c": 10}, temperature=2.0)
    counts = Counter(name for name, _ in t)
    assert all(abs(counts[k] / 5000 - p[k]) < 0.02 for k in p)


def test_deterministic_by_seed_and_resumable():
    full = list(itertools.islice(MixtureStream(_sources(), weights={"a": 1, "b": 1, "c": 1}, seed=7), 6000))
    again = list(itertools.islice(MixtureStream(_sources(), weights={"a": 1, "b": 1, "c": 1}, seed=7), 6000))
    other = list(itertools.islice(MixtureStream(_sources(), weights={"a": 1, "b": 1, "c": 1}, seed=8), 6000))
    assert full == again and full != other
    for cut in (1, 777, 4096, 5000):  # including across a block boundary of the source draws
        stream = MixtureStream(_sources(), weights={"a": 1, "b": 1, "c": 1}, seed=7)
        head = list(itertools.islice(iter(stream), cut))
        state = json.loads(json.dumps(stream.state_dict()))  # survives a checkpoint round trip
        resumed = MixtureStream(_sources(), weights={"a": 1, "b": 1, "c": 1}, seed=7)
        resumed.load_state_dict(state)
        tail = list(itertools.islice(iter(resumed), 6000 - cut))
        assert head + tail == full, cut
    with pytest.raises(ValueError, match="seed"):
        MixtureStream(_sources(), seed=1).load_state_dict(state)


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def test_manifest_stream_and_image_text_dataset(tmp_path):
    import torch

    from data.curation.mixtures import MixtureImageTextDataset

    def transform(image):  # what ImageTransform does, minus the resize
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    shards = {}
    for name, color, n in (("red", (255, 0, 0), 30), ("blue", (0, 0, 255), 10)):
        path = tmp_path / name / f"{name}-000000.tar"
        write_shard(path, [{"__key__": f"{name}{i:03d}", "png": _png(color), "txt": f"a {name} square".encode()}
                           for i in range(n)])
        shards[name] = {"shards": [str(path)], "samples": n}
    manifest = {"sources": shards, "weights": {"red": 0.25, "blue": 0.75}, "temperature": None, "seed": 3}
    (tmp_path / "mixture.json").write_text(json.dumps(manifest))
    samples = list(itertools.islice(stream_from_manifest(tmp_path / "mixture.json"), 400))
    share = Counter(s["__source__"] for s in samples)["blue"] / 400
    assert abs(share - 0.75) < 0.06
    assert all(s["txt"] == f"a {s['__source__']} square".encode() for s in samples)
    ds = MixtureImageTextDataset(stream_from_manifest(manifest, num_samples=8), transform)
    pairs = list(ds)
    assert len(pairs) == 8 and pairs[0][0].shape == (3, 8, 8)
    for pixels, text in pairs:  # red image <-> "a red square"
        assert (pixels[0].mean() > 0) == (text == "a red square")
    assert np.isclose(sum(stream_from_manifest(manifest).probabilities.values()), 1.0)


def test_datamodule_takes_weighted_sources_and_restores_position(tmp_path):
    from data.curation.mixtures import MixtureImageTextDataModule

    for name, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        write_shard(tmp_path / f"{name}-000000.tar", [{"__key__": f"{name}{i}", "png": _png(color),
                                                     "txt": name.encode()} for i in range(6)])
    sources = {"red": str(tmp_path / "red-*.tar"), "blue": str(tmp_path / "blue-{000000..000000}.tar")}
    dm = MixtureImageTextDataModule(train_sources=sources, weights={"red": 1, "blue": 3}, seed=1)
    assert dm.stream.probabilities == {"red": 0.25, "blue": 0.75}
    first = list(itertools.islice(iter(dm.stream), 5))
    state = dm.state_dict()
    again = MixtureImageTextDataModule(train_sources=sources, weights={"red": 1, "blue": 3}, seed=1)
    again.load_state_dict(state)
    assert next(iter(again.stream)) == next(iter(dm.stream)) and len(first) == 5
    with pytest.raises(ValueError, match="exactly one"):
        MixtureImageTextDataModule()
