"""Encoders, checkpoints, pretrained weights and the embed step."""

from __future__ import annotations

import urllib.request

import numpy as np
import pytest
import torch

from visual_search import models
from visual_search.embed import embed
from visual_search.models import ModelError, build_encoder
from visual_search.preprocess import ImageError

SMALL = {"cnn": {"width": 8, "fc_width": 32}, "vit": {"depth": 1, "width": 32, "heads": 2}, "resnet18": {}, "resnet50": {}}


@pytest.mark.parametrize("name", models.ENCODERS)
def test_every_encoder_gives_unit_embeddings(name):
    enc = build_encoder(name, embedding_dim=24, projection_dim=8, **SMALL[name])
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        e, z = enc(x), enc(x, layer="head")
    assert e.shape == (3, 24) and z.shape == (3, 8)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert enc.num_parameters(head=True) > enc.num_parameters() > 0


@pytest.mark.parametrize("name, pooled_dim", [("cnn", 32), ("vit", 32), ("resnet18", 512)])
def test_three_layers_and_the_retrieval_default(name, pooled_dim):
    enc = build_encoder(name, **SMALL[name])
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert enc(x, layer="pooled").shape == (2, pooled_dim)
        torch.testing.assert_close(enc(x), enc(x, layer="embedding"))
        pooled = build_encoder(name, retrieval_layer="pooled", **SMALL[name])
        torch.testing.assert_close(pooled(x), pooled(x, layer="pooled"))
    with pytest.raises(ModelError, match="layer must be one of"):
        enc(x, layer="logits")
    with pytest.raises(ModelError, match="retrieval_layer must be"):
        build_encoder(name, retrieval_layer="head", **SMALL[name])


def test_cnn_architecture_arguments_change_the_network():
    small = build_encoder("cnn", conv_layers=2, width=8, fc_width=16)
    big = build_encoder("cnn", conv_layers=3, width=16, fc_width=64)
    assert small.num_parameters() < big.num_parameters()
    convs = [m for m in small.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 4 and convs[-1].out_channels == 16


def test_vit_patch_grid():
    enc = build_encoder("vit", patch_size=4, depth=1, width=32, heads=2)
    assert enc.backbone.features.seq_length == (28 // 4) ** 2 + 1  # 49 patches + the class token
    with pytest.raises(ModelError, match="multiple of patch_size"):
        build_encoder("vit", patch_size=5)


def test_seed_makes_initialisation_reproducible_without_touching_global_rng():
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a, b = build_encoder("cnn", seed=3, **SMALL["cnn"]), build_encoder("cnn", seed=3, **SMALL["cnn"])
    assert torch.rand(1) == before
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "vgg"}, "unknown encoder 'vgg'"),
        ({"name": "cnn", "embedding_dim": 0}, "embedding_dim must be a positive integer"),
        ({"name": "cnn", "depth": 3}, "cnn: .*depth"),
        ({"name": "resnet18", "width": 3}, "resnet18: unexpected arguments"),
        ({"name": "vit", "pretrained": True}, "pretrained weights are offered for the ResNets only"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_encoder(**kwargs)


def test_wrong_input_channels():
    with pytest.raises(ModelError, match=r"expected \[N, 1, H, W\]"):
        build_encoder("cnn", **SMALL["cnn"])(torch.zeros(2, 3, 28, 28))


def test_save_and_load_round_trip(tmp_path):
    enc = build_encoder("cnn", seed=1, **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path, extra={"note": "test"})
    loaded, extra = models.load_encoder(path)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x))
    assert extra == {"note": "test"} and loaded.config == enc.config


def test_broken_checkpoints(tmp_path):
    with pytest.raises(ModelError, match="no such checkpoint"):
        models.load_encoder(tmp_path / "missing.pt")
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="not a usable encoder checkpoint"):
        models.load_encoder(path)


def _resnet18_weights_file(torch_home):
    """A real-format resnet18 state dict where torchvision's download would cache it."""
    from torchvision.models import ResNet18_Weights, resnet18

    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    state = resnet18().state_dict()
    torch.save(state, checkpoints / ResNet18_Weights.DEFAULT.url.rsplit("/", 1)[-1])
    return state


def test_pretrained_resnet_loads_torchvision_weights_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = _resnet18_weights_file(tmp_path)
    enc = build_encoder("resnet18", pretrained=True)
    torch.testing.assert_close(enc.backbone.features.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    # one input channel: the pretrained RGB filters are summed (then averaged over the one channel)
    torch.testing.assert_close(enc.backbone.features.conv1.weight, state["conv1.weight"].sum(dim=1, keepdim=True))
    assert (enc.mean, enc.std) == (models.IMAGENET_MEAN, models.IMAGENET_STD)


def test_pretrained_offline_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: torchvision must download
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # a closed port: the download fails at once, as offline
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen caches its proxy settings on first use
    with pytest.raises(ModelError, match=r"(?s)could not get ResNet18_Weights.*Connection refused.*pretrained=False"):
        build_encoder("resnet18", pretrained=True)


# ---- embed --------------------------------------------------------------------------------------


def test_embed_shapes_and_batch_size_invariance(sample):
    enc = build_encoder("cnn", **SMALL["cnn"])
    images = sample.query_images[:37]
    a = embed(enc, images, batch_size=8)
    b = embed(enc, images, batch_size=256)
    assert a.dtype == np.float32 and a.shape == (37, 128)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert embed(enc, images[:3], layer="head").shape == (3, 64)


def test_embed_uses_the_encoders_retrieval_layer(sample, tmp_path):
    enc = build_encoder("cnn", retrieval_layer="pooled", **SMALL["cnn"])
    assert embed(enc, sample.query_images[:3]).shape == (3, 32)  # width 8 -> 8, 16, 32 channels
    models.save_encoder(enc, tmp_path / "e.pt")
    assert models.load_encoder(tmp_path / "e.pt")[0].retrieval_layer == "pooled"


def test_embed_resizes_to_the_encoders_input(sample):
    enc = build_encoder("cnn", image_size=32, **SMALL["cnn"])
    assert embed(enc, sample.query_images[:2]).shape == (2, 128)


@pytest.mark.parametrize(
    "images, error, message",
    [
        (np.zeros((2, 28, 28), np.float32), ImageError, "uint8"),
        (np.zeros((28, 28), np.uint8), ImageError, r"\[N, H, W\]"),
        ("images", ImageError, "str"),
        (np.zeros((0, 28, 28), np.uint8), ImageError, "empty"),
    ],
)
def test_embed_rejects_bad_images(images, error, message):
    with pytest.raises(error, match=message):
        embed(build_encoder("cnn", **SMALL["cnn"]), images)


def test_embed_rejects_bad_arguments(sample):
    with pytest.raises(ModelError, match="batch_size"):
        embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:2], batch_size=0)
    with pytest.raises(ModelError, match="Encoder"):
        embed(torch.nn.Linear(2, 2), sample.query_images[:2])
