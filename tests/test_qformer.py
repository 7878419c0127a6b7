"""Q-Former connector: layer layout, what its queries read from the image, use as a LLaVA connector."""

from collections.abc import Callable

import pytest
import torch
from jsonargparse import ArgumentParser

from models.connectors import Connector
from models.language import LanguageModel
from models.llava import LLaVA
from models.qformer import QFormerAttention, QFormerConnector
from models.vision import TimmVision
from tests.tiny import LM_CONFIG, VISION, tiny_world


def small(in_dim=16, out_dim=32, **kw):
    torch.manual_seed(kw.pop("seed", 0))
    return QFormerConnector(in_dim, out_dim, **{"num_queries": 8, "hidden_dim": 64, "depth": 2, "heads": 2, **kw})


def test_shapes_num_tokens_and_bad_input():
    q = small()
    assert q(torch.randn(3, 10, 16)).shape == (3, 8, 32)
    assert q(torch.randn(1, 1, 16)).shape == (1, 8, 32)  # any patch count, even one
    assert q.num_tokens(10) == 8 == q.num_tokens(576)
    assert q.query_tokens.shape == (8, 64)
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        q(torch.randn(10, 16))
    with pytest.raises(ValueError, match=r"\(B, N, 16\)"):
        q(torch.randn(2, 10, 17))
    with pytest.raises(ValueError, match="divisible by heads"):
        QFormerConnector(16, 32, hidden_dim=30, heads=4)
    with pytest.raises(ValueError, match="cross_attention_freq"):
        QFormerConnector(16, 32, hidden_dim=8, heads=2, cross_attention_freq=0)


@pytest.mark.parametrize("depth,freq,expected", [(4, 2, [0, 2]), (4, 1, [0, 1, 2, 3]), (5, 3, [0, 3]), (2, 4, [0])])
def test_cross_attention_every_freq_layers(depth, freq, expected):
    q = small(depth=depth, cross_attention_freq=freq)
    assert q.cross_attention_layers == expected
    cross = [name for name, m in q.named_modules() if name.endswith("cross_attn") and m is not None]
    assert cross == [f"layers.{i}.cross_attn" for i in expected]
    # every layer self-attends; only cross-attention modules read the image width (in_dim=16)
    attns = [m for m in q.modules() if isinstance(m, QFormerAttention)]
    assert len(attns) == depth + len(expected)
    assert sum(m.key.in_features == 16 for m in attns) == len(expected)


def test_batch_independent_and_patch_order_irrelevant():
    q = small(depth=4).eval()
    x = torch.randn(3, 10, 16)
    out = q(x)
    torch.testing.assert_close(q(x[1:2]), out[1:2], rtol=0, atol=1e-6)
    torch.testing.assert_close(q(x[:, torch.randperm(10)]), out, rtol=0, atol=1e-6)
    # a sample's output does not move when another sample in the batch changes
    y = x.clone()
    y[0] = torch.randn(10, 16)
    torch.testing.assert_close(q(y)[1:], out[1:], rtol=0, atol=1e-6)


def test_output_depends_on_the_image():
    q = small().eval()
    x = torch.randn(2, 10, 16)
    out = q(x)
    noise = 1e-6  # float32 reordering noise, cf. the tolerances above
    assert (q(torch.randn(2, 10, 16)) - out).abs().amax(dim=(1, 2)).min() > 100 * noise
    assert (q(x[:, :5]) - out).abs().max() > 100 * noise  # a different set of patches, not just a reordering
    assert (q(2 * x + 1) - out).abs().max() < noise  # ln_vision: per-patch affine changes are normalised away
    assert (out[:, 0] - out[:, 1]).abs().max() > 100 * noise  # queries are distinct tokens


def test_dropout_only_in_training():
    q = small(dropout=0.5)
    x = torch.randn(2, 10, 16)
    assert not torch.allclose(q.train()(x), q(x))
    q.eval()
    torch.testing.assert_close(q(x), q(x), rtol=0, atol=0)


def test_gradient_reaches_input_queries_and_every_parameter():
    q = small(depth=4, cross_attention_freq=2)
    x = torch.randn(2, 10, 16, requires_grad=True)
    q(x).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert q.query_tokens.grad is not None and (q.query_tokens.grad.abs().sum(-1) > 0).all()  # each query learns
    for name, p in q.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_state_dict_round_trip(tmp_path):
    q = small().eval()
    path = tmp_path / "qformer.pt"
    torch.save(q.state_dict(), path)
    other = small(seed=1).eval()
    x = torch.randn(2, 10, 16)
    assert not torch.allclose(other(x), q(x))
    other.load_state_dict(torch.load(path, weights_only=True))
    torch.testing.assert_close(other(x), q(x), rtol=0, atol=0)


def test_built_from_yaml_as_a_connector_factory():
    """As LLaVA's `connector:` entry: jsonargparse fills in (vision dim, LM width) at call time."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--connector", type=Callable[[int, int], Connector])
    init_args = {"num_queries": 8, "hidden_dim": 64, "depth": 2, "heads": 2}
    cfg = parser.parse_object({"connector": {"class_path": "models.qformer.QFormerConnector", "init_args": init_args}})
    q = parser.instantiate(cfg).connector(16, 32)
    assert isinstance(q, QFormerConnector) and (q.in_dim, q.out_dim, q.num_queries, len(q.layers)) == (16, 32, 8, 2)
    assert q(torch.randn(1, 5, 16)).shape == (1, 8, 32)
    with pytest.raises(Exception, match="num_querys"):
        parser.parse_object({"connector": {"class_path": "models.qformer.QFormerConnector",
                                           "init_args": {"num_querys": 8}}})


def test_llava_with_qformer_connector(tmp_path_factory):
    world = tiny_world(tmp_path_factory.mktemp("world"))
    torch.manual_seed(0)
    model = LLaVA(TimmVision(**VISION["init_args"]),
                  LanguageModel(config=LM_CONFIG, tokenizer=str(world / "tokenizer")),
                  connector=lambda i, o: QFormerConnector(i, o, num_queries=4, hidden_dim=32, depth=2, heads=2))
    assert model.num_image_tokens == 4
    assert (model.connector.in_dim, model.connector.out_dim) == (model.vision.dim, LM_CONFIG["hidden_size"])
    img = model.language.image_token_id
    ids = torch.tensor([[5, img, 6, 7], [8, 9, img, 10]])
    labels = torch.tensor([[-100, -100, 6, 7], [-100, -100, -100, 10]])
    rows = [model.image_placeholders.widen(i, lab) for i, lab in zip(ids, labels)]  # what the collators feed
    ids, labels = torch.stack([i for i, _ in rows]), torch.stack([lab for _, lab in rows])
    logits, loss = model(ids, torch.ones_like(ids), torch.randn(2, 3, 75, 75), labels)
    assert logits.shape[:2] == (2, 4 - 1 + 4)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.connector.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
