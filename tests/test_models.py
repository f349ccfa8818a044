"""Encoders, checkpoints, pretrained weights and the embed step."""

from __future__ import annotations

import io
import json
import urllib.request

import numpy as np
import pytest
import torch

from visual_search import container, models
from visual_search import embed as embed_module
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
        ({"name": "cnn", "embedding_dim": 0}, r"embedding_dim must be an integer in \[1, 8192\], got 0"),
        ({"name": "cnn", "depth": 3}, "cnn: .*depth"),
        ({"name": "resnet18", "width": 3}, "resnet18: unexpected arguments"),
        ({"name": "vit", "pretrained": True}, "pretrained weights are offered for the ResNets only"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_encoder(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        *[({"name": "cnn", "embedding_dim": v}, "embedding_dim must be an integer") for v in (0, -1, 2.5, 128.0, True, "128", None, 10**6)],
        *[({"name": "cnn", "in_channels": v}, "in_channels must be an integer") for v in (0, 1000, 1.0)],
        *[({"name": "cnn", "image_size": v}, "image_size must be an integer") for v in (0, -28, 100_000, np.float32(28))],
        *[({"name": "vit", "projection_dim": v}, "projection_dim must be an integer") for v in (0, 10**6, False)],
        *[({"name": "cnn", "seed": v}, "seed must be an integer") for v in (-1, 2**32, 1.5, "0")],
        ({"name": "resnet18", "pretrained": "yes"}, "pretrained must be True or False"),
        # cnn
        *[({"name": "cnn", arg: v}, f"cnn: {arg} must be an integer") for arg in ("conv_layers", "width", "fc_width") for v in (0, -2, 1.5, True)],
        ({"name": "cnn", "conv_layers": 6}, r"cnn: conv_layers=6 max-pools a 28 px image 5 times"),  # 28 -> 14 -> 7 -> 3 -> 1 -> 0
        ({"name": "cnn", "image_size": 7, "conv_layers": 4}, "max-pools a 7 px image 3 times"),
        ({"name": "cnn", "conv_layers": 4, "width": 8_192}, "cnn: width must be an integer"),
        ({"name": "cnn", "conv_layers": 4, "width": 1024}, "8,192 channels in the last block, more than 4,096"),
        # vit
        *[({"name": "vit", arg: v}, f"vit: {arg} must be an integer") for arg in ("patch_size", "depth", "width", "heads") for v in (0, -1, 2.0, None)],
        ({"name": "vit", "patch_size": 29}, "multiple of patch_size 29"),  # larger than the image
        ({"name": "vit", "patch_size": 56, "image_size": 28}, "multiple of patch_size 56"),
        ({"name": "vit", "patch_size": 5}, "multiple of patch_size 5"),
        ({"name": "vit", "width": 30, "heads": 4}, "width 30 must be a multiple of heads 4"),
        # unknown arguments name the accepted ones
        ({"name": "cnn", "patch_size": 4}, r"cnn: unexpected arguments \['patch_size'\].*'conv_layers', 'width', 'fc_width'"),
        ({"name": "vit", "conv_layers": 2}, r"vit: unexpected arguments \['conv_layers'\].*'patch_size', 'depth', 'width', 'heads'"),
        ({"name": "resnet50", "depth": 3}, r"resnet50: unexpected arguments \['depth'\].*'embedding_dim'"),
    ],
)
def test_every_build_argument_is_checked_when_the_encoder_is_built(kwargs, message):
    with pytest.raises(ModelError, match=message):
        build_encoder(**kwargs)


@pytest.mark.parametrize(
    "kwargs, image_size",
    [
        ({"name": "cnn", "conv_layers": 5, "width": 2, "fc_width": 4, "image_size": 16}, 16),  # pooled down to 1 x 1
        ({"name": "cnn", "conv_layers": 1, "width": 1, "fc_width": 1, "embedding_dim": 1, "projection_dim": 1}, 28),
        ({"name": "vit", "patch_size": 28, "depth": 1, "width": 8, "heads": 8}, 28),  # one patch, one dimension per head
        ({"name": "vit", "patch_size": 1, "depth": 1, "width": 4, "heads": 1, "image_size": 4}, 4),
        ({"name": "cnn", "seed": None, "width": 2, "fc_width": 4}, 28),
        ({"name": "cnn", "seed": 2**32 - 1, "embedding_dim": np.int64(8), "width": 2, "fc_width": 4}, 28),
    ],
)
def test_what_the_checks_accept_runs_forward(kwargs, image_size):
    enc = build_encoder(**kwargs)
    with torch.no_grad():
        for layer in models.LAYERS:
            if layer != "whitened":  # needs a fit first (tested below)
                assert torch.isfinite(enc(torch.randn(2, 1, image_size, image_size), layer=layer)).all()
    json.dumps(enc.config)  # plain Python values only (a NumPy int became an int)


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
    with pytest.raises(ModelError, match=r"missing\.pt: no such checkpoint"):
        models.load_encoder(tmp_path / "missing.pt")
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path)
    blob = path.read_bytes()
    for cut in (1000, len(blob) - 1, 60, 4):
        path.write_bytes(blob[:cut])
        with pytest.raises(ModelError, match=r"enc\.pt: (checksum mismatch|truncated|not a visual_search checkpoint)"):
            models.load_encoder(path)
    path.write_bytes(blob + b"\0")  # padded
    with pytest.raises(ModelError, match=r"enc\.pt: checksum mismatch"):
        models.load_encoder(path)


def _biggest_weight(enc):
    return max(enc.state_dict().items(), key=lambda kv: kv[1].numel())


def test_one_flipped_byte_in_the_weights_is_refused(tmp_path):
    enc = build_encoder("cnn", seed=1, **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path)
    blob = bytearray(path.read_bytes())
    key, weight = _biggest_weight(enc)
    start = bytes(blob).find(weight.numpy().tobytes())  # torch.save stores the tensor's bytes as they are
    assert start > 0
    blob[start + weight.numel() * weight.element_size() // 2] ^= 0x10  # one bit, in the middle of that weight
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelError, match=r"enc\.pt: checksum mismatch"):
        models.load_encoder(path)


def test_a_plain_torch_save_file_is_refused_without_unpickling_it(tmp_path, monkeypatch):
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "old.pt"
    torch.save({"name": enc.name, "config": enc.config, "state_dict": enc.state_dict(), "extra": {}}, path)  # the old format

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called on an unverified file")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(ModelError, match=r"old\.pt: not a visual_search checkpoint.*plain torch\.save file"):
        models.load_encoder(path)
    (tmp_path / "text.pt").write_text("hello, world")
    with pytest.raises(ModelError, match=r"text\.pt: not a visual_search checkpoint"):
        models.load_encoder(tmp_path / "text.pt")


def test_torch_load_is_only_ever_called_weights_only_on_the_verified_payload(tmp_path, request):
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path, state={"step": torch.tensor(3), "betas": (0.9, 0.999)})
    calls = request.getfixturevalue("torch_load_calls")  # installed here, after the save above
    checkpoint = models.load_checkpoint(path)
    assert calls and all(isinstance(f, io.BytesIO) and weights_only is True for f, weights_only in calls)
    assert checkpoint.state["betas"] == (0.9, 0.999) and checkpoint.state["step"].item() == 3 and checkpoint.format_version == 1


def test_a_newer_format_version_is_refused(tmp_path, monkeypatch):
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "future.pt"
    monkeypatch.setattr(models, "CHECKPOINT_VERSION", 2)
    models.save_encoder(enc, path)  # a valid checksum, written by "version 2"
    monkeypatch.setattr(models, "CHECKPOINT_VERSION", 1)
    with pytest.raises(ModelError, match=r"future\.pt: written by format version 2; this library reads versions 1 to 1"):
        models.load_encoder(path)


def _rewrite(path, edit_header=None, weights=None):
    """Rewrite a checkpoint with a changed header or weights and a valid checksum (as someone editing it would)."""
    _, header, payload = container.read_container(path, models.CHECKPOINT_MAGIC, (1, 1), ModelError, "checkpoint")
    header.pop("payload_bytes")
    if edit_header:
        edit_header(header)
    if weights is not None:
        buffer = io.BytesIO()
        torch.save({"state_dict": weights, "state": {}}, buffer)
        payload = buffer.getvalue()
    container.write_container(path, models.CHECKPOINT_MAGIC, 1, header, payload)


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    enc = build_encoder("cnn", **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path)
    _rewrite(path, edit_header=lambda h: h["config"].update(width=16))
    with pytest.raises(ModelError, match=r"enc\.pt: weight backbone\.features\.0\.weight is torch\.float32 \[8, 1, 3, 3\], but the architecture needs torch\.float32 \[16, 1, 3, 3\]"):
        models.load_encoder(path)

    models.save_encoder(enc, path)
    _rewrite(path, edit_header=lambda h: h["config"].update(conv_layers=2))
    with pytest.raises(ModelError, match=r"enc\.pt: the weights do not fit a cnn.*unexpected \['backbone\.features"):
        models.load_encoder(path)

    models.save_encoder(enc, path)
    _rewrite(path, edit_header=lambda h: h["config"].update(width=0))
    with pytest.raises(ModelError, match=r"enc\.pt: the saved config does not build an encoder \(cnn: width must be"):
        models.load_encoder(path)

    double = {k: (v.double() if v.is_floating_point() else v) for k, v in enc.state_dict().items()}
    models.save_encoder(enc, path)
    _rewrite(path, weights=double)
    with pytest.raises(ModelError, match=r"enc\.pt: weight .* is torch\.float64"):
        models.load_encoder(path)

    broken = dict(enc.state_dict())
    key, weight = _biggest_weight(enc)
    broken[key] = torch.full_like(weight, float("nan"))
    models.save_encoder(enc, path)
    _rewrite(path, weights=broken)
    with pytest.raises(ModelError, match=rf"enc\.pt: weight {key} contains NaN"):
        models.load_encoder(path)

    changed = dict(enc.state_dict())
    changed[key] = weight + 1
    models.save_encoder(enc, path)
    _rewrite(path, weights=changed)  # fits, but are not the weights the header describes
    with pytest.raises(ModelError, match=r"enc\.pt: the weights give model version cnn-\w{12}, but the header records"):
        models.load_encoder(path)


def test_the_checkpoint_header_is_plain_json(tmp_path):
    enc = build_encoder("cnn", retrieval_layer="pooled", **SMALL["cnn"])
    path = tmp_path / "enc.pt"
    models.save_encoder(enc, path, extra={"note": "test", "curve": [1.5, 2.5]})
    assert path.read_bytes()[:8] == models.CHECKPOINT_MAGIC
    _, header, _ = container.read_container(path, models.CHECKPOINT_MAGIC, (1, 1), ModelError, "checkpoint")
    assert header["name"] == "cnn" and header["config"] == enc.config and header["model_version"] == enc.version
    assert header["extra"] == {"note": "test", "curve": [1.5, 2.5]}
    with pytest.raises(ModelError, match="JSON-serialisable"):
        models.save_encoder(enc, tmp_path / "bad.pt", extra={"weights": torch.zeros(2)})
    with pytest.raises(ModelError, match="weights_only=True"):
        models.save_encoder(enc, tmp_path / "bad.pt", state={"fn": len})  # a function is not weights-only data
    assert not (tmp_path / "bad.pt").exists()


def test_version_is_computed_from_the_weights(tmp_path):
    a, b = build_encoder("cnn", seed=1, **SMALL["cnn"]), build_encoder("cnn", seed=1, **SMALL["cnn"])
    assert a.version == b.version and a.version.startswith("cnn-") and len(a.version) == len("cnn-") + 12
    assert build_encoder("cnn", seed=2, **SMALL["cnn"]).version != a.version
    models.save_encoder(a, tmp_path / "a.pt")
    assert models.load_encoder(tmp_path / "a.pt")[0].version == a.version
    key, _ = _biggest_weight(b)
    with torch.no_grad():
        b.state_dict()[key].view(-1)[0] += 1e-3  # one weight changed
    assert b.version != a.version
    b.load_state_dict(a.state_dict())
    assert b.version == a.version
    b.retrieval_layer = "pooled"  # the same weights embed differently: another version
    assert b.version != a.version
    a.train()
    with torch.no_grad():
        a(torch.randn(4, 1, 28, 28))  # a forward pass in train mode updates BatchNorm's running statistics
    assert a.version != models.load_encoder(tmp_path / "a.pt")[0].version


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


def test_a_pretrained_resnet_checkpoint_loads_without_downloading(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "with-weights"))
    _resnet18_weights_file(tmp_path / "with-weights")
    enc = build_encoder("resnet18", pretrained=True, embedding_dim=16)
    models.save_encoder(enc, tmp_path / "r.pt")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))  # no cached weights: a download would fail
    loaded = models.load_encoder(tmp_path / "r.pt")[0]  # the 7x7 pretrained stem, not the 3x3 one built from scratch
    assert loaded.config["pretrained"] is True and (loaded.mean, loaded.std) == (models.IMAGENET_MEAN, models.IMAGENET_STD)
    assert loaded.version == enc.version
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x))


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


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, 8.0, True, "8", None])
def test_embed_rejects_bad_batch_sizes(sample, batch_size):
    with pytest.raises(ModelError, match="batch_size must be an integer >= 1"):
        embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:2], batch_size=batch_size)


def test_embed_rejects_bad_arguments(sample):
    assert embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:3], batch_size=np.int64(2)).shape == (3, 128)
    with pytest.raises(ModelError, match="Encoder"):
        embed(torch.nn.Linear(2, 2), sample.query_images[:2])
    with pytest.raises(ModelError, match="layer must be one of"):
        embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:2], layer="logits")


def _modes(enc):
    return [m.training for m in enc.modules()]


@pytest.mark.parametrize("training", [True, False])
def test_embed_restores_the_training_mode(sample, training):
    enc = build_encoder("cnn", **SMALL["cnn"]).train(training)
    reference = embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:4])
    np.testing.assert_array_equal(embed(enc, sample.query_images[:4]), reference)  # always in eval mode
    assert _modes(enc) == [training] * len(_modes(enc))


def test_embed_restores_each_modules_own_mode(sample):
    enc = build_encoder("cnn", **SMALL["cnn"]).train()
    enc.head.eval()  # e.g. a frozen head while the backbone trains
    before = _modes(enc)
    embed(enc, sample.query_images[:4])
    assert _modes(enc) == before


@pytest.mark.parametrize("training", [True, False])
def test_embed_restores_the_training_mode_when_it_raises(sample, monkeypatch, training):
    enc = build_encoder("cnn", **SMALL["cnn"]).train(training)
    with pytest.raises(ImageError, match="empty"):
        embed(enc, np.zeros((0, 28, 28), np.uint8))
    assert _modes(enc) == [training] * len(_modes(enc))

    calls = []
    real = embed_module.preprocess_batch

    def fail_on_the_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ImageError("images: failed mid-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_module, "preprocess_batch", fail_on_the_second_batch)
    with pytest.raises(ImageError, match="mid-way"):
        embed(enc, sample.query_images[:10], batch_size=4)
    assert len(calls) == 2 and _modes(enc) == [training] * len(_modes(enc))


# The whitened layer: the conv map before pooling, PCA-whitened (embed.fit_whitening).


def test_fit_whitening_matches_scikit_learns_pca_and_whitens(sample):
    from sklearn.decomposition import PCA

    enc = build_encoder("cnn", **SMALL["cnn"])  # width 8: a 32 x 7 x 7 = 1,568-value map
    images = sample.gallery_images[::4]
    maps = embed_module.conv_maps(enc, images)
    assert maps.shape == (len(images), 1568)
    embed_module.fit_whitening(enc, images, dim=24)
    assert enc.retrieval_layer == "whitened" and enc.config["whitening_dim"] == 24 and int(enc.whitening.n_fitted) == len(images)
    reference = PCA(24, whiten=True, svd_solver="covariance_eigh").fit(maps).transform(maps)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    got = embed(enc, images)
    # Principal directions are defined up to sign: compare |cosine| per dimension pair after aligning signs.
    signs = np.sign(np.sum(got * reference, axis=0))
    np.testing.assert_allclose(got * signs, reference, atol=2e-3)
    with torch.no_grad():
        white = enc.whitening(torch.from_numpy(maps)).numpy()
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(24), atol=2e-3)  # unit variance, uncorrelated


def test_a_whitened_encoder_round_trips_and_an_unfitted_one_refuses(sample, tmp_path):
    enc = embed_module.fit_whitening(build_encoder("cnn", seed=3, **SMALL["cnn"]), sample.gallery_images[:300], dim=16)
    before = embed(enc, sample.query_images[:5])
    assert before.shape == (5, 16)
    models.save_encoder(enc, tmp_path / "w.pt")
    loaded = models.load_pretrained(tmp_path / "w.pt")
    assert loaded.version == enc.version and loaded.retrieval_layer == "whitened"
    np.testing.assert_array_equal(embed(loaded, sample.query_images[:5]), before)
    refit = embed_module.fit_whitening(models.load_pretrained(tmp_path / "w.pt"), sample.gallery_images[300:700], dim=16)
    assert refit.version != enc.version  # the fit is part of what the model computes
    rebuilt = build_encoder("cnn", **enc.config)  # same architecture, whitening not fitted
    with pytest.raises(ModelError, match="no fitted whitening; call visual_search.embed.fit_whitening"):
        embed(rebuilt, sample.query_images[:2])
    with pytest.raises(ModelError, match="no fitted whitening"):
        embed(build_encoder("cnn", **SMALL["cnn"]), sample.query_images[:2], layer="whitened")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda s: embed_module.fit_whitening(build_encoder("vit", **SMALL["vit"]), s.gallery_images[:100]), "only the cnn has a whitened layer, not 'vit'"),
        (lambda s: embed_module.fit_whitening(build_encoder("cnn", **SMALL["cnn"]), s.gallery_images[:50], dim=64), "needs more than 64 images, got 50"),
        (lambda s: embed_module.fit_whitening(build_encoder("cnn", **SMALL["cnn"]), s.gallery_images[:100], dim=5000), "dim must be"),
        (lambda s: embed_module.fit_whitening(build_encoder("cnn", **SMALL["cnn"]), np.zeros((100, 28, 28), np.uint8), dim=8), "varies in only 0 directions"),
        (lambda s: embed_module.fit_whitening(build_encoder("cnn", **SMALL["cnn"]), s.gallery_images[:100].astype(np.float32)), "images: expected a uint8"),
        (lambda s: embed_module.fit_whitening("cnn", s.gallery_images[:100]), "encoder: expected a visual_search.models.Encoder"),
        (lambda s: build_encoder("cnn", retrieval_layer="whitened", **SMALL["cnn"]), "needs whitening_dim"),
        (lambda s: build_encoder("vit", whitening_dim=8, **SMALL["vit"]), "only the cnn has a whitened layer"),
        (lambda s: build_encoder("cnn", whitening_dim=0, **SMALL["cnn"]), "whitening_dim must be"),
        (lambda s: build_encoder("cnn", whitening_dim=2000, **SMALL["cnn"]), "whitening_dim must be"),
        (lambda s: build_encoder("resnet18").feature_map(torch.zeros(1, 1, 28, 28)), "only the cnn exposes its conv map"),
    ],
)
def test_whitening_refuses_bad_input_by_name(sample, call, message):
    with pytest.raises((ModelError, ImageError), match=message):
        call(sample)
