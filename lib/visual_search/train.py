"""Contrastive (SimCLR) training, with a kNN retrieval monitor, checkpoints and resume.

    python -m visual_search.train --epochs 50 --whiten 64 --out checkpoints/simclr_cnn.pt   # the committed checkpoint
    python -m visual_search.train --epochs 1 --limit 2000 --out /tmp/try.pt                 # a quick look
    python -m visual_search.train --whiten 64 --whiten-only --out checkpoints/simclr_cnn.pt # refit the whitening only

Each epoch shuffles the training images, makes two random views of every
image (``contrastive.augment_batch``), and minimises ``contrastive.nt_xent`` on
the projection head's output. After each epoch a kNN monitor embeds the
committed sample's 500 queries and 2,000 gallery images with the backbone and
reports P@1: the fraction of queries whose nearest gallery image has their class.

After training, ``--whiten D`` fits the CNN's "whitened" retrieval layer
(``embed.fit_whitening``: a PCA whitening of the conv map, no labels) on the
training images and makes it the retrieval layer; ``--whiten 0`` keeps pooling.

Everything random (initialisation, shuffling, views) flows from one ``seed``;
the same seed, data and torch version give the same weights on the same machine.

The checkpoint written after every epoch is an ordinary ``models.save_encoder``
file: the run's settings and history go into its JSON metadata
(``extra["train_state"]``), the optimiser, schedule and random-generator states
into its tensor payload. Resuming reads it back through the same verified loader
(``models.load_checkpoint``: checksum first, then ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm  # plain text bars: work in a terminal and in Jupyter without ipywidgets

from visual_search import config
from visual_search._checks import check_int, check_real, check_seed
from visual_search.contrastive import augment_batch, moco_infonce, nt_xent
from visual_search.data import Sample, load_fashion_mnist, load_sample
from visual_search.embed import fit_whitening, refit_whitening
from visual_search.errors import TrainError  # noqa: F401  (re-exported: raised here, importable from here)
from visual_search.models import Encoder, ModelError, build_encoder, load_checkpoint, save_encoder
from visual_search.preprocess import preprocess_batch

#: The parts of the training state that go into a checkpoint's tensor payload (the rest is JSON metadata).
#: ``method_state`` holds what a method keeps between steps (MoCo's key encoder and queue, NNCLR's support set).
TRAIN_STATE_TENSORS = ("optimiser", "schedule", "generator", "method_state")
#: The self-supervised methods ``train_contrastive`` runs (``TrainConfig.method``).
METHODS = ("simclr", "moco", "nnclr")
#: A nearest-neighbour search for NNCLR: ``search(queries [n, D], support [K, D]) -> ids [n]`` (float32 unit rows).
NeighbourSearch = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class TrainConfig:
    """Everything that decides the result of a run (saved with the checkpoint)."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    temperature: float = 0.2
    seed: int = 0
    limit: int | None = None  # train on the first `limit` images only (fast mode, quick looks)
    encoder: str = "cnn"
    # Retrieval uses the pooled conv features: for this CNN they beat the FC embedding and the head
    # at kNN (measured by `python -m visual_search.bench encoders`; see results/bench_encoders.json).
    encoder_args: dict[str, Any] = field(default_factory=lambda: {"conv_layers": 3, "width": 16, "fc_width": 128, "retrieval_layer": "pooled"})
    # Milder than SimCLR's ImageNet recipe: Fashion-MNIST items are centred and small, so a crop
    # below 60% of the area or heavy blur often removes what makes a class (pilot runs: kNN P@1
    # after 3 epochs on 20k images 0.804 with these, 0.758 with augment_batch's stronger defaults).
    augment_args: dict[str, Any] = field(default_factory=lambda: {"crop_scale": (0.6, 1.0), "max_rotation": 10.0, "blur_p": 0.2})
    # "simclr": the batch's other views are the negatives (nt_xent). "moco": MoCo v2, a momentum
    # key encoder and a queue of queue_size earlier keys as negatives (moco_infonce). "nnclr": SimCLR
    # whose positive is the nearest neighbour of a view in a support set of queue_size earlier embeddings.
    method: str = "simclr"
    queue_size: int = 4096
    momentum: float = 0.99  # MoCo: key weights <- momentum * key + (1 - momentum) * query after every step


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Check a run's settings before anything is built; return them with numbers as plain Python ints and floats.

    Args:
        cfg: the settings to check.

    Returns:
        A copy of ``cfg`` (so a NumPy integer becomes an ``int`` and the settings stay JSON-serialisable).

    Raises:
        TrainError: naming the field (``TrainConfig.epochs`` ...) and what is wrong with it.
    """
    if not isinstance(cfg, TrainConfig):
        raise TrainError(f"cfg: expected a TrainConfig, got {type(cfg).__name__}")
    checked = {
        "epochs": check_int(cfg.epochs, "TrainConfig.epochs", low=1, error=TrainError),
        "batch_size": check_int(cfg.batch_size, "TrainConfig.batch_size", low=2, error=TrainError),  # NT-Xent needs negatives
        "lr": check_real(cfg.lr, "TrainConfig.lr", low=0, low_open=True, error=TrainError),
        "weight_decay": check_real(cfg.weight_decay, "TrainConfig.weight_decay", low=0, error=TrainError),
        "temperature": check_real(cfg.temperature, "TrainConfig.temperature", low=0, low_open=True, error=TrainError),
        "seed": check_seed(cfg.seed, "TrainConfig.seed", error=TrainError),
        "limit": check_int(cfg.limit, "TrainConfig.limit", low=1, error=TrainError, allow_none=True),
        "queue_size": check_int(cfg.queue_size, "TrainConfig.queue_size", low=1, error=TrainError),
        "momentum": check_real(cfg.momentum, "TrainConfig.momentum", low=0, high=1, high_open=True, error=TrainError),
    }
    if cfg.method not in METHODS:
        raise TrainError(f"TrainConfig.method must be one of {METHODS}, got {cfg.method!r}")
    if cfg.method != "simclr" and checked["queue_size"] < checked["batch_size"]:
        raise TrainError(f"TrainConfig.queue_size ({checked['queue_size']}) must hold at least one batch ({checked['batch_size']}) for {cfg.method}")
    for name in ("encoder_args", "augment_args"):
        if not isinstance(getattr(cfg, name), dict):
            raise TrainError(f"TrainConfig.{name} must be a dict, got {type(getattr(cfg, name)).__name__}")
    return dataclasses.replace(cfg, **checked)


def _as_json(value: Any) -> Any:
    """``value`` as it comes back from a checkpoint's JSON metadata (tuples become lists)."""
    return json.loads(json.dumps(value))


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_unit_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W]`` -> float ``[N, 1, H, W]`` in [0, 1] (augmentations work before z-scoring)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        raise TrainError(f"images: expected uint8 [N, H, W], got {getattr(images, 'dtype', type(images).__name__)} {list(np.shape(images))}")
    return torch.tensor(images).unsqueeze(1).float().div_(255.0)


@torch.no_grad()
def knn_precision_at_1(encoder: Encoder, sample: Sample, layer: str | None = None) -> float:
    """The monitor: fraction of the sample's queries whose nearest gallery image (backbone embedding) has their class.

    ``layer`` defaults to the encoder's retrieval layer, except that a "whitened" encoder
    is monitored at "pooled": its whitening was fitted to earlier weights and is refitted
    only when training ends.
    """
    device = next(encoder.parameters()).device
    if layer is None:
        layer = "pooled" if encoder.retrieval_layer == "whitened" else encoder.retrieval_layer

    def embed_all(images: np.ndarray) -> torch.Tensor:
        parts = []
        for start in range(0, len(images), 256):  # batches of 256: one huge batch is slower on a CPU
            x = preprocess_batch(images[start : start + 256], size=encoder.image_size, mean=encoder.mean, std=encoder.std, channels=encoder.in_channels)
            parts.append(encoder(x.to(device), layer=layer).cpu())
        return torch.cat(parts)

    nearest = (embed_all(sample.query_images) @ embed_all(sample.gallery_images).T).argmax(dim=1).numpy()
    return float(np.mean(sample.gallery_labels[nearest] == sample.query_labels))


def nearest_in_support(queries: np.ndarray, support: np.ndarray) -> np.ndarray:
    """NNCLR's default neighbour search: each query's most similar support row (inner product of unit rows)."""
    return np.argmax(queries @ support.T, axis=1)


class _SimCLR:
    """SimCLR: two views of each image; the other 2N-2 views in the batch are the negatives."""

    def __init__(self, cfg: TrainConfig, encoder: Encoder, generator: torch.Generator, search: NeighbourSearch | None = None) -> None:
        self.cfg = cfg

    def loss(self, encoder: Encoder, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z = encoder(torch.cat([v1, v2]), layer="head")
        return nt_xent(z[: len(v1)], z[len(v1) :], self.cfg.temperature)

    def after_step(self, encoder: Encoder) -> None:
        """Nothing to update after the optimiser's step."""

    def state(self) -> dict[str, Any]:
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


class _Queue:
    """A FIFO of the last ``size`` unit rows (MoCo's negatives, NNCLR's support set); ``filled`` counts rows written."""

    def __init__(self, size: int, dim: int, generator: torch.Generator, device: torch.device) -> None:
        self.rows = torch.nn.functional.normalize(torch.randn(size, dim, generator=generator), dim=1).to(device)
        self.ptr = 0
        self.filled = 0

    def push(self, z: torch.Tensor) -> None:
        z = torch.nn.functional.normalize(z.detach(), dim=1)[: len(self.rows)]
        slots = (self.ptr + torch.arange(len(z))) % len(self.rows)
        self.rows[slots.to(self.rows.device)] = z
        self.ptr = int((self.ptr + len(z)) % len(self.rows))
        self.filled = min(len(self.rows), self.filled + len(z))

    def state(self) -> dict[str, Any]:
        return {"rows": self.rows.cpu(), "ptr": torch.tensor(self.ptr), "filled": torch.tensor(self.filled)}

    def load_state(self, state: dict[str, Any]) -> None:
        self.rows.copy_(state["rows"])
        self.ptr, self.filled = int(state["ptr"]), int(state["filled"])


class _MoCo:
    """MoCo v2: the query encoder learns; a momentum copy makes the keys; a queue of earlier keys is the negatives.

    One view of each image goes through the encoder being trained (the query), the
    other through the key encoder without gradient, so a step costs about two thirds
    of SimCLR's (one backward pass over B images instead of 2B). The key encoder's
    weights trail the query encoder's (``momentum``), so the keys in the queue stay
    consistent with each other although they come from earlier steps. On one device
    the key batch's BatchNorm statistics are its own, which is the leak MoCo's
    "shuffle BN" removes across GPUs; with a queue of thousands of negatives it did
    not stop learning here (the ablations measure it).
    """

    def __init__(self, cfg: TrainConfig, encoder: Encoder, generator: torch.Generator, search: NeighbourSearch | None = None) -> None:
        self.cfg = cfg
        self.key = copy.deepcopy(encoder)
        for p in self.key.parameters():
            p.requires_grad_(False)
        device = next(encoder.parameters()).device
        self.queue = _Queue(cfg.queue_size, encoder.head[-1].out_features, generator, device)

    def loss(self, encoder: Encoder, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        q = encoder(v1, layer="head")
        with torch.no_grad():
            self.key.train()
            k = self.key(v2, layer="head")
        loss = moco_infonce(q, k, self.queue.rows, self.cfg.temperature)
        self.queue.push(k)  # after the loss: a key is never its own query's negative
        return loss

    @torch.no_grad()
    def after_step(self, encoder: Encoder) -> None:
        m = self.cfg.momentum
        for pk, pq in zip(self.key.parameters(), encoder.parameters()):
            pk.mul_(m).add_(pq.detach(), alpha=1 - m)
        for bk, bq in zip(self.key.buffers(), encoder.buffers()):  # BatchNorm's running statistics
            bk.copy_(bq)

    def state(self) -> dict[str, Any]:
        return {"key_encoder": self.key.state_dict(), **self.queue.state()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.key.load_state_dict(state["key_encoder"])
        self.queue.load_state(state)


class _NNCLR(_SimCLR):
    """NNCLR: SimCLR, except that a view's positive is its nearest neighbour in a support set of earlier embeddings.

    The neighbour is another image the model already finds similar, so the positive
    brings variation no augmentation makes (another shirt, not the same shirt cropped).
    The loss is symmetric: NN(z1) against z2 and NN(z2) against z1, each with the
    batch's other views as negatives (``nt_xent``). Until the support set is full the
    step is plain SimCLR. The search is ``search(queries, support) -> ids``: by default
    an exact inner-product scan; ``bench ablations`` passes the course's exact index.
    """

    def __init__(self, cfg: TrainConfig, encoder: Encoder, generator: torch.Generator, search: NeighbourSearch | None = None) -> None:
        super().__init__(cfg, encoder, generator)
        device = next(encoder.parameters()).device
        self.support = _Queue(cfg.queue_size, encoder.head[-1].out_features, generator, device)
        self.search = search or nearest_in_support

    def _neighbours(self, z: torch.Tensor) -> torch.Tensor:
        queries = torch.nn.functional.normalize(z.detach(), dim=1).cpu().numpy().astype(np.float32)
        ids = np.asarray(self.search(queries, self.support.rows.cpu().numpy().astype(np.float32))).reshape(-1)
        return self.support.rows[torch.as_tensor(ids, dtype=torch.long, device=self.support.rows.device)]

    def loss(self, encoder: Encoder, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z = encoder(torch.cat([v1, v2]), layer="head")
        z1, z2 = z[: len(v1)], z[len(v1) :]
        if self.support.filled < len(self.support.rows):
            loss = nt_xent(z1, z2, self.cfg.temperature)
        else:
            loss = 0.5 * (nt_xent(self._neighbours(z1), z2, self.cfg.temperature) + nt_xent(self._neighbours(z2), z1, self.cfg.temperature))
        self.support.push(z1)
        return loss

    def state(self) -> dict[str, Any]:
        return self.support.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.support.load_state(state)


_METHOD_CLASSES = {"simclr": _SimCLR, "moco": _MoCo, "nnclr": _NNCLR}
TRAINED_WITH = {"simclr": "SimCLR (NT-Xent)", "moco": "MoCo v2 (momentum encoder, queue of negatives)", "nnclr": "NNCLR (nearest-neighbour positives, NT-Xent)"}


def train_contrastive(
    cfg: TrainConfig,
    images: np.ndarray,
    out: str | Path | None = None,
    resume: bool = False,
    monitor: Sample | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    neighbour_search: NeighbourSearch | None = None,
) -> tuple[Encoder, list[dict[str, float]]]:
    """Train an encoder without labels on uint8 images ``[N, 28, 28]``: SimCLR, MoCo v2 or NNCLR (``cfg.method``).

    Args:
        cfg: the run's settings.
        images: the training images (labels are never used).
        out: checkpoint path, written after every epoch (atomically).
        resume: continue from ``out`` if it exists (same cfg required).
        monitor: a ``Sample`` for the per-epoch kNN P@1 (None: skip it).
        device: default CUDA if present, else CPU.
        progress: show tqdm bars.
        stop_after: end this call after that many epochs in total (a time-boxed run;
            call again with ``resume=True`` to go on). The schedule still spans ``cfg.epochs``.
        neighbour_search: NNCLR's ``search(queries, support) -> ids`` (default: an exact scan).

    Returns:
        ``(encoder in eval mode, history)``; history has one dict per epoch:
        epoch, loss, knn_p_at_1 (if monitored), seconds.

    Raises:
        TrainError: for a bad setting (``check_config``), too few images, a bad
            ``stop_after``, or an ``out`` that cannot be resumed (damaged, or made
            with other settings).
    """
    cfg = check_config(cfg)
    stop_after = check_int(stop_after, "stop_after", low=1, error=TrainError, allow_none=True)
    device = device or default_device()
    x_all = to_unit_tensor(images[: cfg.limit] if cfg.limit else images)
    if len(x_all) < cfg.batch_size:
        raise TrainError(f"{len(x_all)} training images is fewer than one batch of {cfg.batch_size}")
    encoder = build_encoder(cfg.encoder, seed=cfg.seed, **cfg.encoder_args).to(device)
    optimiser = torch.optim.AdamW(list(encoder.parameters()), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(x_all) // cfg.batch_size
    schedule = one_cycle(optimiser, cfg.lr, cfg.epochs * steps_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    method = _METHOD_CLASSES[cfg.method](cfg, encoder, generator, neighbour_search)
    history: list[dict[str, float]] = []
    start_epoch = 0

    out = Path(out) if out is not None else None
    if resume and out is not None and out.exists():
        try:
            checkpoint = load_checkpoint(out)  # verified, and unpickled with weights_only=True
        except ModelError as e:
            raise TrainError(f"cannot resume: {e}") from e
        saved = checkpoint.extra.get("train_state")
        if not isinstance(saved, dict) or saved.get("cfg") != _as_json(asdict(cfg)) or any(k not in checkpoint.state for k in TRAIN_STATE_TENSORS):
            raise TrainError(f"{out}: cannot resume: it was made with different settings (or is not a training checkpoint)")
        try:
            encoder.load_state_dict(checkpoint.encoder.state_dict())
            optimiser.load_state_dict(checkpoint.state["optimiser"])
            schedule.load_state_dict(checkpoint.state["schedule"])
            generator.set_state(checkpoint.state["generator"])
            method.load_state(checkpoint.state["method_state"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise TrainError(f"{out}: cannot resume: its training state does not fit this run ({type(e).__name__}: {e})") from e
        history = list(saved["history"])
        start_epoch = len(history)

    for epoch in range(start_epoch, min(cfg.epochs, stop_after or cfg.epochs)):
        encoder.train()
        t0 = time.perf_counter()
        order = _shuffled_batches(len(x_all), cfg.batch_size, generator)
        total = 0.0
        bar = tqdm(order, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for batch_ids in bar:
            x = x_all[batch_ids]
            v1, v2 = ((augment_batch(x, generator, **cfg.augment_args).to(device) - encoder.mean) / encoder.std for _ in range(2))  # z-score after augmenting
            loss = method.loss(encoder, v1, v2)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            method.after_step(encoder)
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        encoder.eval()
        record = {"epoch": epoch + 1, "loss": total / steps_per_epoch, "seconds": time.perf_counter() - t0}
        if monitor is not None:
            record["knn_p_at_1"] = knn_precision_at_1(encoder, monitor)
        history.append(record)
        if progress:
            tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        if out is not None:
            tensors = {"optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(), "generator": generator.get_state(), "method_state": method.state()}
            save_encoder(encoder, out, extra={"train_state": {"cfg": asdict(cfg), "history": history}}, state=tensors)
    if len(history) == cfg.epochs:  # finished: a whitened encoder (encoder_args with whitening_dim) gets its fit
        _refit_whitening(encoder, images[: cfg.limit] if cfg.limit else images)
    return encoder.eval(), history


#: The name chapters 04-06 and the tests have always called: the same function.
train_simclr = train_contrastive


def one_cycle(optimiser: torch.optim.Optimizer, lr: float, total_steps: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule every loop here uses: 10% warm-up, then cosine decay.

    torch's OneCycleLR divides by the warm-up length minus one step, so a warm-up of
    exactly one step (10 steps in all) crashed with ZeroDivisionError; that one case gets
    a 2-step warm-up instead. Every other length keeps the 10% the committed run used.
    """
    pct_start = 0.2 if total_steps * 0.1 == 1 else 0.1
    return torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=total_steps, pct_start=pct_start)


def _shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random permutation of range(n) cut into full batches ``[steps, batch_size]`` (the remainder is dropped)."""
    steps = n // batch_size
    return torch.randperm(n, generator=generator)[: steps * batch_size].view(steps, batch_size)


def _check_loop_args(epochs: int, batch_size: int, lr: float, seed: int, min_batch: int = 1) -> tuple[int, int, float, int]:
    """The checks ``train_supervised`` and ``finetune_on_pairs`` share; returns the values as Python numbers."""
    return (
        check_int(epochs, "epochs", low=1, error=TrainError),
        check_int(batch_size, "batch_size", low=min_batch, error=TrainError),
        check_real(lr, "lr", low=0, low_open=True, error=TrainError),
        check_seed(seed, "seed", error=TrainError),
    )


def train_supervised(
    encoder: Encoder,
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 5,
    batch_size: int = 256,
    lr: float = 2e-3,
    seed: int = 0,
    progress: bool = True,
    monitor: Sample | None = None,
    history: list[dict[str, float]] | None = None,
) -> Encoder:
    """Train the backbone as a classifier (cross-entropy on the labels), then keep the backbone.

    With human labels for every image this is the ceiling a self-supervised model
    is compared with: it knows the classes, SimCLR has to discover them.
    The same mild augmentations as SimCLR are used, one view per image.

    Args:
        encoder: trained in place (its projection head is not used).
        images: uint8 ``[N, H, W]``; labels: int ``[N]`` class ids.
        epochs, batch_size, lr, seed: the usual.
        monitor: a ``Sample`` for the per-epoch kNN P@1, to see the plateau (None: skip it).
        history: if given, one dict per epoch is appended to it (epoch, loss, seconds, knn_p_at_1).

    Returns:
        The encoder, in eval mode.

    Raises:
        TrainError: for bad images, labels that are not ``[N]`` class ids >= 0,
            fewer images than one batch, or a bad epochs, batch_size, lr or seed.
    """
    epochs, batch_size, lr, seed = _check_loop_args(epochs, batch_size, lr, seed)
    x_all = to_unit_tensor(images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise TrainError(f"labels: expected [{len(images)}] integer class ids >= 0, got {labels.dtype} {list(labels.shape)}")
    if len(x_all) < batch_size:
        raise TrainError(f"{len(x_all)} training images is fewer than one batch of {batch_size}")
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        classifier = torch.nn.Linear(encoder.embedding_dim, int(labels_t.max()) + 1)
    device = next(encoder.parameters()).device
    classifier.to(device)
    optimiser = torch.optim.AdamW(list(encoder.backbone.parameters()) + list(classifier.parameters()), lr=lr, weight_decay=1e-5)
    steps = len(x_all) // batch_size
    schedule = one_cycle(optimiser, lr, epochs * steps)
    augment_args = TrainConfig().augment_args
    for epoch in range(epochs):
        encoder.train()
        t0, total = time.perf_counter(), 0.0
        for ids in tqdm(_shuffled_batches(len(x_all), batch_size, generator), desc=f"supervised {epoch + 1}/{epochs}", disable=not progress, leave=False):
            x = augment_batch(x_all[ids], generator, **augment_args).to(device)
            loss = torch.nn.functional.cross_entropy(classifier(encoder.backbone((x - encoder.mean) / encoder.std)), labels_t[ids].to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
        encoder.eval()
        if history is not None:
            record = {"epoch": epoch + 1, "loss": total / steps, "seconds": time.perf_counter() - t0}
            if monitor is not None:
                record["knn_p_at_1"] = knn_precision_at_1(encoder, monitor)
            history.append(record)
    return _refit_whitening(encoder, images)


def _refit_whitening(encoder: Encoder, images: np.ndarray) -> Encoder:
    """Training changed the conv map, so a whitened encoder's whitening is refitted on the training images."""
    return refit_whitening(encoder, images).eval()


def finetune_on_pairs(
    encoder: Encoder,
    images: np.ndarray,
    query_ids: np.ndarray,
    positive_ids: np.ndarray,
    epochs: int = 2,
    batch_size: int = 256,
    lr: float = 5e-4,
    temperature: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> Encoder:
    """Contrastive fine-tuning on (query, positive) pairs, e.g. from clicks or human labels.

    Each batch holds B pairs; the positive of query i is ``images[positive_ids[i]]``
    and the other 2B-2 images in the batch are its negatives (``nt_xent``). Light
    augmentation keeps the model from memorising the exact pairs.

    Returns:
        The encoder (trained in place), in eval mode.

    Raises:
        TrainError: for bad images or pair ids, fewer pairs than one batch, or a
            bad epochs, batch_size (>= 2), lr, temperature or seed.
    """
    epochs, batch_size, lr, seed = _check_loop_args(epochs, batch_size, lr, seed, min_batch=2)
    temperature = check_real(temperature, "temperature", low=0, low_open=True, error=TrainError)
    query_ids, positive_ids = np.asarray(query_ids), np.asarray(positive_ids)
    if query_ids.shape != positive_ids.shape or query_ids.ndim != 1 or len(query_ids) < batch_size or query_ids.dtype.kind not in "iu" or positive_ids.dtype.kind not in "iu":
        raise TrainError(f"need two equal-length integer id arrays with at least one batch ({batch_size}) of pairs, got {query_ids.dtype} {query_ids.shape} and {positive_ids.dtype} {positive_ids.shape}")
    if min(query_ids.min(), positive_ids.min()) < 0 or max(query_ids.max(), positive_ids.max()) >= len(images):
        raise TrainError(f"pair ids must index the {len(images)} images")
    x_all = to_unit_tensor(images)
    generator = torch.Generator().manual_seed(seed)
    device = next(encoder.parameters()).device
    optimiser = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=1e-5)
    augment_args = {**TrainConfig().augment_args, "crop_scale": (0.8, 1.0)}
    encoder.train()
    for epoch in range(epochs):
        for ids in tqdm(_shuffled_batches(len(query_ids), batch_size, generator), desc=f"pairs {epoch + 1}/{epochs}", disable=not progress, leave=False):
            q = augment_batch(x_all[query_ids[ids.numpy()]], generator, **augment_args)
            p = augment_batch(x_all[positive_ids[ids.numpy()]], generator, **augment_args)
            z = encoder((torch.cat([q, p]).to(device) - encoder.mean) / encoder.std, layer="head")
            loss = nt_xent(z[: len(ids)], z[len(ids) :], temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return _refit_whitening(encoder, images)


def finalize_checkpoint(encoder: Encoder, path: str | Path, cfg: TrainConfig, history: list[dict[str, float]], command: str,
                        whitening: dict[str, Any] | None = None) -> None:
    """Rewrite a checkpoint without optimiser state (small enough to commit) but with its provenance.

    ``whitening`` records how the "whitened" layer was fitted (dim, images, seconds, kNN before and after), if it was.
    """
    extra = {
        "trained_with": f"{TRAINED_WITH[cfg.method]} on the Fashion-MNIST train split, no labels",
        "command": command,
        "config": asdict(cfg),
        "history": history,
        "wall_seconds": sum(h["seconds"] for h in history),
        "machine": {"processor": platform.machine(), "python": platform.python_version(), "torch": str(torch.__version__), "threads": torch.get_num_threads()},
    }
    if whitening is not None:
        extra["whitening"] = whitening
    save_encoder(encoder, path, extra=extra)
    Path(path).with_suffix(".json").write_text(json.dumps(extra, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--width", type=int, default=defaults.encoder_args["width"])
    parser.add_argument("--out", type=Path, default=config.REPO_ROOT / "checkpoints" / "simclr_cnn.pt")
    parser.add_argument("--resume", action="store_true", help="continue from --out")
    parser.add_argument("--whiten", type=int, default=64, metavar="D",
                        help="after training, fit a D-d whitened retrieval layer on the train images (0: keep pooling)")
    parser.add_argument("--whiten-only", action="store_true", help="do not train: refit the whitening of the finished checkpoint --out")
    args = parser.parse_args(argv)
    command = "python -m visual_search.train " + " ".join(argv if argv is not None else sys.argv[1:])
    images, _ = load_fashion_mnist("train")
    if args.whiten_only:
        if args.whiten < 1:
            raise TrainError(f"--whiten-only needs --whiten D >= 1, got {args.whiten}")
        checkpoint = load_checkpoint(args.out)
        extra = checkpoint.extra
        if "config" not in extra or "history" not in extra:
            raise TrainError(f"{args.out}: not a finished checkpoint (no config and history); train it first")
        cfg = TrainConfig(**extra["config"])
        encoder, history = checkpoint.encoder, extra["history"]
        command = extra["command"].split(" --whiten")[0] + f" --whiten {args.whiten}"  # what reproduces the file in one run
    else:
        cfg = TrainConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature, seed=args.seed, limit=args.limit,
            encoder_args={**defaults.encoder_args, "width": args.width},
        )
        encoder, history = train_simclr(cfg, images, out=args.out, resume=args.resume, monitor=load_sample())
    whitening = None
    if args.whiten:
        t0 = time.perf_counter()
        fit_whitening(encoder, images, dim=args.whiten)
        whitening = {"dim": args.whiten, "fitted_on": f"the {len(images):,} train images, no labels", "seconds": time.perf_counter() - t0,
                     "knn_p_at_1_pooled": knn_precision_at_1(encoder, load_sample(), layer="pooled"),
                     "knn_p_at_1_whitened": knn_precision_at_1(encoder, load_sample(), layer="whitened")}
    finalize_checkpoint(encoder, args.out, cfg, history, command, whitening)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB); kNN P@1 on the sample: {history[-1].get('knn_p_at_1')}"
          + (f", {whitening['knn_p_at_1_whitened']:.3f} whitened" if whitening else ""))


if __name__ == "__main__":
    main()
