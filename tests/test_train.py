"""SimCLR training: reproducible, resumable, and the committed checkpoint loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visual_search import models
from visual_search.embed import embed
from visual_search.train import TrainConfig, TrainError, finalize_checkpoint, knn_precision_at_1, train_simclr

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
        (TrainConfig(**{**TINY, "epochs": 0}), None, "epochs must be >= 1"),
        (TrainConfig(**{**TINY, "limit": 10}), None, "fewer than one batch"),
        (TrainConfig(**TINY), np.zeros((300, 28, 28), np.float32), "expected uint8"),
    ],
)
def test_bad_training_arguments(sample, cfg, images, message):
    with pytest.raises(TrainError, match=message):
        train_simclr(cfg, sample.gallery_images if images is None else images, progress=False)
def test_committed_checkpoint_loads_and_beats_a_random_encoder(sample):
    if not models.CHECKPOINT_PATH.exists():
        pytest.fail(f"{models.CHECKPOINT_PATH} is missing: train it with the command in its .json file")
    trained = models.load_pretrained()
    assert models.CHECKPOINT_PATH.stat().st_size < 10_000_000
    e = embed(trained, sample.query_images[:4])
    assert trained.retrieval_layer == "pooled"  # measured best for retrieval (results/bench_encoders.json)
    assert e.shape == (4, 64) and e.dtype == np.float32  # 16 -> 32 -> 64 channels, globally pooled
    random_init = models.build_encoder(trained.name, **{**trained.config, "seed": 0})
    assert knn_precision_at_1(trained, sample) > knn_precision_at_1(random_init, sample)
