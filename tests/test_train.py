"""SimCLR training: reproducible, resumable, and the committed checkpoint loads."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from visual_search import models
from visual_search.embed import embed
from visual_search.train import (
    TRAIN_STATE_TENSORS,
    TrainConfig,
    TrainError,
    finalize_checkpoint,
    finetune_on_pairs,
    knn_precision_at_1,
    train_simclr,
    train_supervised,
)

TINY = dict(epochs=2, batch_size=64, limit=256, encoder_args={"conv_layers": 2, "width": 4, "fc_width": 16})


def _weights(encoder):
    return [p.detach().clone() for p in encoder.state_dict().values()]


def test_same_seed_same_weights_and_history(sample):
    a, ha = train_simclr(TrainConfig(**TINY), sample.gallery_images, progress=False)
    b, hb = train_simclr(TrainConfig(**TINY), sample.gallery_images, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(b)))
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    c, _ = train_simclr(TrainConfig(**{**TINY, "seed": 1}), sample.gallery_images, progress=False)
    assert not all(torch.equal(x, y) for x, y in zip(_weights(a), _weights(c)))


def test_resume_continues_exactly_where_it_stopped(sample, tmp_path):
    full, history = train_simclr(TrainConfig(**TINY), sample.gallery_images, progress=False)
    path = tmp_path / "run.pt"
    train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, progress=False, stop_after=1)
    resumed, resumed_history = train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, resume=True, progress=False)
    assert len(resumed_history) == 2
    assert all(torch.equal(x, y) for x, y in zip(_weights(full), _weights(resumed)))
    with pytest.raises(TrainError, match="different settings"):
        train_simclr(TrainConfig(**{**TINY, "lr": 0.1}), sample.gallery_images, out=path, resume=True, progress=False)


def test_resume_reads_the_checkpoint_weights_only_through_the_verified_loader(sample, tmp_path, request):
    path = tmp_path / "run.pt"
    train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, progress=False, stop_after=1)
    assert path.read_bytes()[:8] == models.CHECKPOINT_MAGIC
    checkpoint = models.load_checkpoint(path)
    assert set(checkpoint.state) == set(TRAIN_STATE_TENSORS) == {"optimiser", "schedule", "generator", "method_state"}
    assert checkpoint.extra["train_state"]["cfg"]["augment_args"]["crop_scale"] == [0.6, 1.0]  # JSON: the tuple is a list
    calls = request.getfixturevalue("torch_load_calls")  # installed here, after the save above
    _, history = train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, resume=True, progress=False)
    assert len(history) == 2
    assert calls and all(isinstance(f, io.BytesIO) and weights_only is True for f, weights_only in calls)


def test_resume_refuses_a_damaged_or_foreign_checkpoint(sample, tmp_path):
    path = tmp_path / "run.pt"
    train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, progress=False, stop_after=1)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(TrainError, match=r"cannot resume: .*run\.pt: checksum mismatch"):
        train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, resume=True, progress=False)
    torch.save({"extra": {"train_state": {}}}, path)  # a plain pickle is never unpickled
    with pytest.raises(TrainError, match=r"cannot resume: .*run\.pt: not a visual_search checkpoint"):
        train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, resume=True, progress=False)
    enc = models.build_encoder("cnn", seed=0, **TINY["encoder_args"])
    models.save_encoder(enc, path, extra={"note": "not a training checkpoint"})
    with pytest.raises(TrainError, match="not a training checkpoint"):
        train_simclr(TrainConfig(**TINY), sample.gallery_images, out=path, resume=True, progress=False)


def test_training_changes_the_model_version(sample, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": 1})
    before = models.build_encoder(cfg.encoder, seed=cfg.seed, **cfg.encoder_args)
    trained, _ = train_simclr(cfg, sample.gallery_images, out=tmp_path / "run.pt", progress=False)
    assert trained.version != before.version
    assert models.load_encoder(tmp_path / "run.pt")[0].version == trained.version


def test_history_has_loss_monitor_and_time(sample):
    _, history = train_simclr(TrainConfig(**{**TINY, "epochs": 1}), sample.gallery_images, monitor=sample, progress=False)
    (record,) = history
    assert record["epoch"] == 1 and np.isfinite(record["loss"]) and 0 <= record["knn_p_at_1"] <= 1 and record["seconds"] > 0


def test_final_checkpoint_is_small_and_records_provenance(sample, tmp_path):
    enc, history = train_simclr(TrainConfig(**{**TINY, "epochs": 1}), sample.gallery_images, progress=False)
    path = tmp_path / "final.pt"
    finalize_checkpoint(enc, path, TrainConfig(**{**TINY, "epochs": 1}), history, "python -m visual_search.train --test")
    loaded, extra = models.load_encoder(path)
    assert extra["command"].startswith("python -m visual_search.train") and extra["history"] == history
    assert "train_state" not in extra and path.with_suffix(".json").exists()
    np.testing.assert_allclose(embed(loaded, sample.query_images[:5]), embed(enc, sample.query_images[:5]), atol=1e-6)


@pytest.mark.parametrize(
    "cfg, images, message",
    [
        (TrainConfig(**{**TINY, "epochs": 0}), None, r"TrainConfig\.epochs must be an integer >= 1, got 0"),
        (TrainConfig(**{**TINY, "limit": 10}), None, "fewer than one batch"),
        (TrainConfig(**TINY), np.zeros((300, 28, 28), np.float32), "expected uint8"),
    ],
)
def test_bad_training_arguments(sample, cfg, images, message):
    with pytest.raises(TrainError, match=message):
        train_simclr(cfg, sample.gallery_images if images is None else images, progress=False)


@pytest.mark.parametrize(
    "field, values",
    [
        ("epochs", [0, -1, 2.0, True, "2", None]),
        ("batch_size", [0, 1, 64.0, False]),  # NT-Xent needs at least 2 images per batch
        ("lr", [0, -1e-3, float("nan"), float("inf"), "0.1", None]),
        ("weight_decay", [-1e-5, float("nan"), None]),
        ("temperature", [0, -0.2, float("inf"), True]),
        ("seed", [-1, 2**32, 0.5, None]),
        ("limit", [0, -5, 256.0]),  # limit=0 used to mean "all the images"
        ("encoder_args", [None, [("width", 4)]]),
    ],
)
def test_every_config_field_is_checked_by_name(sample, field, values):
    for value in values:
        with pytest.raises(TrainError, match=rf"TrainConfig\.{field} must be"):
            train_simclr(TrainConfig(**{**TINY, field: value}), sample.gallery_images, progress=False)


def test_numpy_numbers_in_the_config_are_accepted_and_saved_as_json(sample, tmp_path):
    cfg = TrainConfig(**{**TINY, "epochs": np.int64(1), "batch_size": np.int32(64), "lr": np.float32(2e-3), "seed": np.uint8(0)})
    train_simclr(cfg, sample.gallery_images, out=tmp_path / "run.pt", progress=False)
    assert models.load_checkpoint(tmp_path / "run.pt").extra["train_state"]["cfg"]["epochs"] == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda enc, s: train_supervised(enc, s.gallery_images, s.gallery_labels, epochs=0), "epochs must be an integer >= 1"),
        (lambda enc, s: train_supervised(enc, s.gallery_images, s.gallery_labels, lr=0), "lr must be a finite number > 0"),
        (lambda enc, s: train_supervised(enc, s.gallery_images, s.gallery_labels.astype(float)), "integer class ids"),
        (lambda enc, s: train_supervised(enc, s.gallery_images[:10], s.gallery_labels[:10], batch_size=64), "fewer than one batch"),
        (lambda enc, s: finetune_on_pairs(enc, s.gallery_images, np.arange(8), np.arange(8), batch_size=1), "batch_size must be an integer >= 2"),
        (lambda enc, s: finetune_on_pairs(enc, s.gallery_images, np.arange(8), np.arange(8), batch_size=4, temperature=0), "temperature must be"),
        (lambda enc, s: finetune_on_pairs(enc, s.gallery_images, np.arange(8.0), np.arange(8.0), batch_size=4), "integer id arrays"),
        (lambda enc, s: finetune_on_pairs(enc, s.gallery_images, np.arange(8), np.arange(8), batch_size=4, seed=-1), "seed must be"),
    ],
)
def test_supervised_and_pair_training_check_their_arguments(sample, call, message):
    with pytest.raises(TrainError, match=message):
        call(models.build_encoder("cnn", **TINY["encoder_args"]), sample)
def test_committed_checkpoint_loads_and_beats_a_random_encoder(sample):
    if not models.CHECKPOINT_PATH.exists():
        pytest.fail(f"{models.CHECKPOINT_PATH} is missing: train it with the command in its .json file")
    trained = models.load_pretrained()
    assert models.CHECKPOINT_PATH.stat().st_size < 2_000_000  # ~0.5 MB of weights + 0.8 MB of whitening (3,136 x 64 floats)
    assert models.CHECKPOINT_PATH.read_bytes()[:8] == models.CHECKPOINT_MAGIC  # the checksummed format, not a bare pickle
    assert trained.version == models.load_pretrained().version
    e = embed(trained, sample.query_images[:4])
    assert trained.retrieval_layer == "whitened"  # measured best for retrieval (results/bench_encoders.json)
    assert e.shape == (4, 64) and e.dtype == np.float32  # the 64 x 7 x 7 conv map whitened to 64 values
    assert int(trained.whitening.n_fitted) == 60_000  # fitted on the whole train split, no labels
    random_init = models.build_encoder(trained.name, **{**trained.config, "seed": 0})
    assert knn_precision_at_1(trained, sample, layer="whitened") > knn_precision_at_1(trained, sample, layer="pooled") > knn_precision_at_1(random_init, sample)


@pytest.mark.parametrize("total_steps", [1, 2, 9, 10, 11, 20, 100])
def test_the_schedule_survives_short_runs(total_steps):
    """torch's OneCycleLR crashed when 10% of the steps was exactly one step (10 steps in all)."""
    from visual_search.train import one_cycle

    optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = one_cycle(optimiser, 0.1, total_steps)
    for _ in range(total_steps):
        optimiser.step()
        schedule.step()


# ---- MoCo v2 and NNCLR ---------------------------------------------------------------------------
METHOD_TINY = {**TINY, "queue_size": 128}


@pytest.mark.parametrize("method", ["moco", "nnclr"])
def test_each_method_learns_reproducibly_and_resumes_exactly(sample, tmp_path, method):
    cfg = TrainConfig(**{**METHOD_TINY, "method": method})
    full, history = train_simclr(cfg, sample.gallery_images, progress=False)
    again, _ = train_simclr(cfg, sample.gallery_images, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(_weights(full), _weights(again)))
    assert all(np.isfinite(h["loss"]) for h in history)
    simclr, _ = train_simclr(TrainConfig(**METHOD_TINY), sample.gallery_images, progress=False)
    assert not all(torch.equal(x, y) for x, y in zip(_weights(full), _weights(simclr)))  # a different method, other weights
    path = tmp_path / "run.pt"
    train_simclr(cfg, sample.gallery_images, out=path, progress=False, stop_after=1)
    state = models.load_checkpoint(path).state["method_state"]
    assert state["rows"].shape == (128, full.head[-1].out_features) and int(state["filled"]) == 128
    resumed, resumed_history = train_simclr(cfg, sample.gallery_images, out=path, resume=True, progress=False)
    assert [h["loss"] for h in resumed_history] == [h["loss"] for h in history]
    assert all(torch.equal(x, y) for x, y in zip(_weights(full), _weights(resumed)))


def test_moco_starts_at_the_closed_form_and_its_key_encoder_trails_by_momentum(sample):
    from visual_search.train import _MoCo

    cfg = TrainConfig(**{**METHOD_TINY, "method": "moco", "momentum": 0.9})
    enc = models.build_encoder("cnn", seed=0, **TINY["encoder_args"])
    moco = _MoCo(cfg, enc, torch.Generator().manual_seed(0))
    key_before = [p.clone() for p in moco.key.parameters()]
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(1.0)
    moco.after_step(enc)
    for kb, k, q in zip(key_before, moco.key.parameters(), enc.parameters()):
        torch.testing.assert_close(k, 0.9 * kb + 0.1 * q)
        assert not k.requires_grad
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    moco.loss(enc, x, x)  # the first keys go into the queue, in order
    assert moco.queue.ptr == 64 and moco.queue.filled == 64
    moco.loss(enc, x, x)
    moco.loss(enc, x, x)
    assert moco.queue.ptr == (3 * 64) % 128 and moco.queue.filled == 128


def test_nnclr_takes_the_nearest_support_row_from_the_given_search(sample):
    from visual_search.train import _NNCLR, nearest_in_support

    cfg = TrainConfig(**{**METHOD_TINY, "method": "nnclr", "queue_size": 64})
    enc = models.build_encoder("cnn", seed=0, **TINY["encoder_args"])
    calls = []

    def search(queries, support):
        calls.append(queries.shape)
        return nearest_in_support(queries, support)

    nnclr = _NNCLR(cfg, enc, torch.Generator().manual_seed(0), search)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    nnclr.loss(enc, x, x)  # fills the support set: plain SimCLR, no search yet
    assert calls == [] and nnclr.support.filled == 64
    nnclr.loss(enc, x, x)
    assert calls == [(64, nnclr.support.rows.shape[1])] * 2
    z = torch.nn.functional.normalize(enc(x[:4], layer="head"), dim=1)
    neighbours = nnclr._neighbours(z)
    # each is a most similar support row (the two pushes of one batch hold near-ties, so compare similarities)
    torch.testing.assert_close((z * neighbours).sum(1), (z @ nnclr.support.rows.T).max(1).values, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("method", "byol", r"TrainConfig\.method must be one of"),
        ("queue_size", 0, r"TrainConfig\.queue_size must be"),
        ("momentum", 1.0, r"TrainConfig\.momentum must be"),
        ("momentum", float("nan"), r"TrainConfig\.momentum must be"),
    ],
)
def test_method_settings_are_checked_by_name(sample, field, value, message):
    with pytest.raises(TrainError, match=message):
        train_simclr(TrainConfig(**{**METHOD_TINY, "method": "moco", field: value}), sample.gallery_images, progress=False)


def test_a_queue_smaller_than_a_batch_is_refused(sample):
    with pytest.raises(TrainError, match="must hold at least one batch"):
        train_simclr(TrainConfig(**{**METHOD_TINY, "method": "nnclr", "queue_size": 32}), sample.gallery_images, progress=False)


def test_supervised_history_shows_the_plateau(sample):
    enc = models.build_encoder("cnn", seed=0, **TINY["encoder_args"])
    history: list = []
    train_supervised(enc, sample.gallery_images[:256], sample.gallery_labels[:256], epochs=2, batch_size=64, progress=False, monitor=sample, history=history)
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["knn_p_at_1"] <= 1 and h["loss"] > 0 for h in history)


def test_training_a_whitened_encoder_refits_its_whitening(sample):
    """Training changes the conv map, so every loop refits the whitened layer on its training images."""
    from visual_search.embed import fit_whitening

    images, labels = sample.gallery_images[:256], sample.gallery_labels[:256]
    enc = fit_whitening(models.build_encoder("cnn", seed=0, **TINY["encoder_args"]), sample.gallery_images[1000:1300], dim=16)
    before = enc.whitening.projection.clone()
    history: list = []
    train_supervised(enc, images, labels, epochs=1, batch_size=64, progress=False, monitor=sample, history=history)
    assert int(enc.whitening.n_fitted) == 256 and not torch.equal(enc.whitening.projection, before)
    assert embed(enc, sample.query_images[:3]).shape == (3, 16)
    finetune_on_pairs(enc, sample.gallery_images[:300], np.arange(64), np.arange(64, 128), batch_size=32, epochs=1, progress=False)
    assert int(enc.whitening.n_fitted) == 300
    cfg = TrainConfig(**{**TINY, "encoder_args": {**TINY["encoder_args"], "whitening_dim": 16, "retrieval_layer": "whitened"}})
    trained, _ = train_simclr(cfg, sample.gallery_images, progress=False, monitor=sample)  # monitored at "pooled" until the fit
    assert trained.retrieval_layer == "whitened" and int(trained.whitening.n_fitted) == 256  # cfg.limit images


def test_whiten_only_refits_a_finished_checkpoint_and_records_it(sample, tmp_path, monkeypatch):
    """``python -m visual_search.train --whiten D --whiten-only``: what made the committed file from its trained weights."""
    from visual_search import train as train_module

    cfg = TrainConfig(**TINY)
    trained, history = train_simclr(cfg, sample.gallery_images, progress=False, monitor=sample)
    path = tmp_path / "finished.pt"
    finalize_checkpoint(trained, path, cfg, history, "python -m visual_search.train --epochs 2")
    # The CLI reads the train split; here the sample's gallery stands in for it (the code under test is the CLI's).
    monkeypatch.setattr(train_module, "load_fashion_mnist", lambda split: (sample.gallery_images, sample.gallery_labels))
    monkeypatch.setattr(train_module, "load_sample", lambda: sample)
    train_module.main(["--whiten", "16", "--whiten-only", "--out", str(path)])
    loaded, extra = models.load_encoder(path)
    assert loaded.retrieval_layer == "whitened" and int(loaded.whitening.n_fitted) == len(sample.gallery_images)
    assert extra["command"] == "python -m visual_search.train --epochs 2 --whiten 16" and extra["whitening"]["dim"] == 16
    assert extra["history"] == history and json.loads(path.with_suffix(".json").read_text()) == extra
    for key, value in trained.backbone.state_dict().items():  # the weights are untouched, only the layer is added
        torch.testing.assert_close(loaded.backbone.state_dict()[key], value)
    with pytest.raises(TrainError, match="--whiten-only needs --whiten D >= 1"):
        train_module.main(["--whiten", "0", "--whiten-only", "--out", str(path)])
    models.save_encoder(trained, tmp_path / "bare.pt")
    with pytest.raises(TrainError, match="not a finished checkpoint"):
        train_module.main(["--whiten-only", "--out", str(tmp_path / "bare.pt")])
