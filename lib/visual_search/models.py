"""Encoders: networks that map a preprocessed image to an L2-normalised embedding.

Every encoder is an ``Encoder`` with three outputs, from the input upwards:

* ``"pooled"``: the backbone's *features* (conv trunk + global pooling for the CNN
  and ResNet, the class token for the ViT);
* ``"embedding"``: the backbone's *neck* (the design notes' fully connected
  layers) maps them to an ``embedding_dim`` vector;
* ``"head"``: a small projection MLP on top, used only by the training loss;
* ``"whitened"`` (CNN only, once fitted): the conv map *before* global pooling,
  flattened, PCA-whitened to ``whitening_dim`` values (``Whitening``, fitted
  without labels by ``visual_search.embed.fit_whitening``). Pooling throws away
  where in the image a pattern is, which raw pixels keep; the map keeps it, and
  whitening (Jegou and Chum, ECCV 2012) evens out its dominant, correlated
  directions so a few bright ones do not decide every similarity.

Following SimCLR, the loss is computed on the head and the head is dropped for
retrieval: layers close to the loss learn to discard what the loss does not
reward (exact brightness, position), which retrieval may need. Which layer
retrieves best is measured, not assumed (notebook 04, ``make bench``); an encoder
remembers its choice in ``retrieval_layer``, and ``embed`` uses it. Every output
is L2-normalised.

An encoder also carries its own preprocessing settings (input size, channels,
mean, std), so ``visual_search.embed.embed`` can feed it raw uint8 images, and a
``version`` computed from its weights, which an index records to refuse queries
embedded by another model.

Checkpoints (``save_encoder`` / ``load_checkpoint``) are ``visual_search.container``
files: magic ``CHECKPOINT_MAGIC``, format ``CHECKPOINT_VERSION``, a SHA-256 over
everything, a JSON header (name, build config, model version, metadata) and the
``torch.save`` bytes of the weights (and of any training state) as payload. The
loader verifies the checksum before it unpickles anything, unpickles only with
``weights_only=True``, and checks that the weights fit the architecture.

    enc = build_encoder("cnn", embedding_dim=128)
    enc = build_encoder("resnet18", pretrained=True)   # downloads ImageNet weights once
    enc = build_encoder("vit", patch_size=7, depth=4, width=128)
    enc = load_pretrained()                             # the committed SimCLR CNN
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from visual_search import config
from visual_search._checks import check_int, check_seed
from visual_search.container import read_container, write_container
from visual_search.errors import ModelError  # noqa: F401  (re-exported: raised here, importable from here)
from visual_search.preprocess import FASHION_MNIST_MEAN, FASHION_MNIST_STD

#: The committed SimCLR CNN (see README "Benchmarks" for how it was trained).
CHECKPOINT_PATH = config.REPO_ROOT / "checkpoints" / "simclr_cnn.pt"
ENCODERS = ("cnn", "resnet18", "resnet50", "vit")
#: ImageNet statistics, for pretrained torchvision weights.
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # the mean of torchvision's per-channel values

#: The first 8 bytes of every checkpoint ``save_encoder`` writes (see ``visual_search.container``).
CHECKPOINT_MAGIC = b"VSCKPT\x00\x00"
#: The checkpoint format version ``save_encoder`` writes; ``load_encoder`` reads versions 1 to this one.
CHECKPOINT_VERSION = 1
#: ``load_encoder`` refuses larger files before reading them (a ResNet-50 with its optimiser state is ~300 MB).
MAX_CHECKPOINT_BYTES = 2 * 1024**3

#: Upper bounds for the sizes ``build_encoder`` accepts: far above anything this course builds, low
#: enough that a typo (an extra zero or three) is refused instead of allocating gigabytes.
MAX_DIM = 8_192  # embedding_dim, projection_dim, the CNN's fc_width (the head alone is MAX_DIM**2 weights)
MAX_IN_CHANNELS = 64
MAX_IMAGE_SIZE = 4_096
MAX_CNN_CHANNELS = 4_096  # in the CNN's last block (width * 2**(conv_layers - 1)): 4096**2 * 9 weights in one conv
#: Each architecture's keyword arguments and their defaults (``build_encoder(name, **kwargs)``).
ARCHITECTURE_ARGS: dict[str, dict[str, int]] = {
    "cnn": {"conv_layers": 3, "width": 32, "fc_width": 256},
    "vit": {"patch_size": 7, "depth": 4, "width": 128, "heads": 4},
    "resnet18": {},
    "resnet50": {},
}
#: Upper bounds of the architecture arguments (each must also be >= 1).
_ARCHITECTURE_MAX = {"conv_layers": 16, "width": 4_096, "fc_width": MAX_DIM, "patch_size": MAX_IMAGE_SIZE, "depth": 64, "heads": 1_024}
_COMMON_ARGS = ("embedding_dim", "in_channels", "image_size", "projection_dim", "pretrained", "seed", "retrieval_layer", "whitening_dim")

LAYERS = ("pooled", "embedding", "head", "whitened")


class Whitening(nn.Module):
    """A fitted PCA whitening: ``(h - mean) @ projection``, from ``in_features`` to ``dim`` values.

    The buffers start empty (zeros, ``n_fitted == 0``) so a checkpoint's config can
    rebuild the module and ``load_state_dict`` can fill it; ``embed.fit_whitening``
    fits it. ``projection``'s columns are the top principal directions divided by the
    square root of their variance, so every output direction has unit variance on the
    images it was fitted on.
    """

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("projection", torch.zeros(in_features, dim))
        self.register_buffer("n_fitted", torch.zeros((), dtype=torch.int64))  # images it was fitted on; 0 = not fitted

    @property
    def fitted(self) -> bool:
        return bool(self.n_fitted > 0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.mean) @ self.projection


class Encoder(nn.Module):
    """A backbone (``features`` then ``neck``) that outputs ``embedding_dim`` values, plus a projection head.

    Attributes:
        name: which architecture ("cnn", "resnet18", ...).
        config: the keyword arguments ``build_encoder`` was called with (saved in checkpoints).
        image_size, in_channels, mean, std: the preprocessing this encoder expects.
        retrieval_layer: the output ``embed`` uses by default (one of ``LAYERS``).
        whitening: the ``Whitening`` behind the "whitened" layer (None: the encoder has no such layer).
        version: a stable id computed from the weights (a property; see ``Encoder.version``).
    """

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        embedding_dim: int,
        projection_dim: int,
        image_size: int,
        in_channels: int,
        mean: float,
        std: float,
        config: dict[str, Any],
        retrieval_layer: str = "embedding",
        whitening: Whitening | None = None,
    ):
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.retrieval_layer = retrieval_layer
        self.head = nn.Sequential(nn.Linear(embedding_dim, embedding_dim), nn.ReLU(inplace=True), nn.Linear(embedding_dim, projection_dim))
        self.embedding_dim = embedding_dim
        self.image_size = image_size
        self.in_channels = in_channels
        self.mean = mean
        self.std = std
        self.config = config
        self.whitening = whitening  # registered last, so fitting one later gives the same state-dict order

    def forward(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Map preprocessed images ``[N, C, H, W]`` to unit-length vectors ``[N, D]``.

        Args:
            x: float32 images, already resized and z-scored for this encoder.
            layer: "pooled", "embedding", "head" or "whitened" (None: ``retrieval_layer``).

        Raises:
            ModelError: for an unknown layer, input of the wrong shape, or "whitened"
                on an encoder whose whitening is missing or not fitted yet.
        """
        layer = layer or self.retrieval_layer
        if layer not in LAYERS:
            raise ModelError(f"layer must be one of {LAYERS}, got {layer!r}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"x: expected [N, {self.in_channels}, H, W], got {list(x.shape)}")
        if layer == "whitened":
            if self.whitening is None or not self.whitening.fitted:
                raise ModelError(f"layer 'whitened': this {self.name} encoder has no fitted whitening; "
                                 "call visual_search.embed.fit_whitening(encoder, images) first")
            return nn.functional.normalize(self.whitening(self.feature_map(x)), dim=1)
        h = self.backbone.features(x)
        if layer != "pooled":
            h = self.backbone.neck(h)
        if layer == "head":
            h = self.head(h)
        return nn.functional.normalize(h, dim=1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The CNN's last conv map before global pooling, flattened and L2-normalised: ``[N, C*h*w]``.

        What the "whitened" layer whitens. Only the CNN is built as a plain conv
        trunk ending in pooling; the ResNet and ViT are refused by name.
        """
        if self.name != "cnn":
            raise ModelError(f"feature_map: only the cnn exposes its conv map here, not {self.name!r}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"x: expected [N, {self.in_channels}, H, W], got {list(x.shape)}")
        return nn.functional.normalize(self.backbone.features[:-2](x).flatten(1), dim=1)  # drop AdaptiveAvgPool2d, Flatten

    def num_parameters(self, head: bool = False) -> int:
        """Trainable parameters of the backbone (and of the head, if asked)."""
        modules = [self.backbone, self.head] if head else [self.backbone]
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)

    @property
    def version(self) -> str:
        """A stable id of what this encoder computes: ``f"{name}-{12 hex digits}"``, e.g. ``"cnn-3f9a0c21b7d4"``.

        The digits start a SHA-256 over every state-dict tensor in key order (its
        name, dtype, shape and bytes) and over the settings that change what
        ``embed`` returns (retrieval layer, input size, channels, mean, std). So
        the same weights give the same version on every machine and device, a
        checkpoint and the encoder it was saved from agree, and any training step
        changes it. An index records it, to refuse queries embedded by another model.

        Computed on every access (under a millisecond for the committed CNN, ~50 ms
        for a ResNet-50's 100 MB); keep the value if you need it in a loop.
        """
        h = hashlib.sha256()
        settings = {"name": self.name, "retrieval_layer": self.retrieval_layer, "image_size": self.image_size,
                    "in_channels": self.in_channels, "mean": float(self.mean), "std": float(self.std)}
        h.update(json.dumps(settings, sort_keys=True).encode())
        for key, tensor in self.state_dict().items():
            t = tensor.detach().to("cpu").contiguous()
            h.update(f"\n{key} {t.dtype} {list(t.shape)}\n".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        return f"{self.name}-{h.hexdigest()[:12]}"


def _backbone(features: nn.Module, neck: nn.Module) -> nn.Sequential:
    """``features`` (image -> pooled vector) then ``neck`` (pooled vector -> embedding), addressable by name."""
    return nn.Sequential(OrderedDict(features=features, neck=neck))


def _cnn(in_channels: int, image_size: int, embedding_dim: int, conv_layers: int = 3, width: int = 32, fc_width: int = 256) -> nn.Module:
    """The design notes' CNN: conv blocks that halve the map and double the channels, then FC layers, then the embedding.

    The arguments are checked by ``build_encoder`` (``_check_architecture``).
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(conv_layers):
        out = width * 2**i
        layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        if i < conv_layers - 1:
            layers.append(nn.MaxPool2d(2))
        channels = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    neck = [nn.Linear(channels, fc_width), nn.BatchNorm1d(fc_width), nn.ReLU(inplace=True), nn.Linear(fc_width, embedding_dim)]
    return _backbone(nn.Sequential(*layers), nn.Sequential(*neck))


def _resnet(depth: int, in_channels: int, embedding_dim: int, pretrained: bool, download: bool = True) -> nn.Module:
    """torchvision's ResNet with a stem for small images and an ``embedding_dim`` output layer.

    From scratch, the 7x7 stride-2 conv and the max-pool (which shrink 224 px to
    56 px) become one 3x3 stride-1 conv, so a 28 px image keeps its detail. With
    ImageNet weights the pretrained 7x7 conv is kept (its filters are the point),
    only the max-pool goes, and for one input channel its RGB filters are summed,
    which is what a grey image replicated into R, G and B would see.
    ``download=False`` builds the pretrained architecture without its weights
    (for a checkpoint, whose weights replace them).
    """
    from torchvision import models

    builder, weights_enum = {18: (models.resnet18, models.ResNet18_Weights), 50: (models.resnet50, models.ResNet50_Weights)}[depth]
    weights = weights_enum.DEFAULT if pretrained and download else None
    if weights is not None:
        try:
            net = builder(weights=weights)
        except Exception as e:  # urllib, http and hash errors all mean "no weights"
            raise ModelError(
                f"could not get {weights} ({type(e).__name__}: {e}).\n"
                f"torchvision downloads {weights.url} once into {torch.hub.get_dir()}/checkpoints. "
                "Offline, either copy that file there from a machine with a network, or use pretrained=False "
                "(random initialisation, which contrastive training then learns from scratch)."
            ) from e
    else:
        net = builder(weights=None)
    if pretrained:
        if in_channels != 3:
            w = net.conv1.weight.data.sum(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            net.conv1.weight.data.copy_(w)  # (random weights when not downloaded: the checkpoint's replace them)
    else:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    neck = nn.Linear(net.fc.in_features, embedding_dim)
    net.fc = nn.Identity()  # the features end at global average pooling
    return _backbone(net, neck)


def _vit(in_channels: int, image_size: int, embedding_dim: int, patch_size: int = 7, depth: int = 4, width: int = 128, heads: int = 4) -> nn.Module:
    """torchvision's VisionTransformer sized for small images: 28 px in 7 px patches is a 4x4 grid of 16 tokens."""
    from torchvision.models import VisionTransformer

    net = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=depth, num_heads=heads, hidden_dim=width, mlp_dim=2 * width, num_classes=embedding_dim
    )
    net.conv_proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)  # torchvision assumes 3 channels
    # torchvision zero-initialises the classifier, which suits fine-tuning a classifier but would
    # make every embedding the zero vector before training: use a standard random init instead.
    neck = nn.Linear(width, embedding_dim)
    net.heads = nn.Identity()  # the features are the class token
    return _backbone(net, neck)


def _check_architecture(name: str, image_size: int, kwargs: dict[str, Any]) -> dict[str, int]:
    """Check ``build_encoder``'s architecture arguments for ``name``; return them all, defaults filled in.

    Every value that would make the network fail at its first forward pass (or
    allocate absurd amounts of memory) is refused here, with its name.

    Raises:
        ModelError: for an argument the architecture does not take, or a bad value.
    """
    accepted = ARCHITECTURE_ARGS[name]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelError(f"{name}: unexpected arguments {unknown}; build_encoder({name!r}) accepts {[*_COMMON_ARGS, *accepted]}")
    args = {**accepted, **kwargs}
    for arg, value in args.items():
        args[arg] = check_int(value, f"{name}: {arg}", low=1, high=_ARCHITECTURE_MAX[arg], error=ModelError)
    if name == "cnn":
        conv_layers, width = args["conv_layers"], args["width"]
        if image_size // 2 ** (conv_layers - 1) < 1:
            raise ModelError(
                f"cnn: conv_layers={conv_layers} max-pools a {image_size} px image {conv_layers - 1} times, down to nothing; "
                f"use conv_layers <= {int(math.log2(image_size)) + 1} or a larger image_size"
            )
        if width * 2 ** (conv_layers - 1) > MAX_CNN_CHANNELS:
            raise ModelError(
                f"cnn: width={width} doubled over conv_layers={conv_layers} gives {width * 2 ** (conv_layers - 1):,} channels "
                f"in the last block, more than {MAX_CNN_CHANNELS:,}"
            )
    elif name == "vit":
        patch_size, width, heads = args["patch_size"], args["width"], args["heads"]
        if patch_size > image_size or image_size % patch_size:
            raise ModelError(f"vit: image_size {image_size} must be a multiple of patch_size {patch_size}")
        if width % heads:
            raise ModelError(f"vit: width {width} must be a multiple of heads {heads}")
    return args


def build_encoder(
    name: str,
    embedding_dim: int = 128,
    in_channels: int = 1,
    image_size: int = 28,
    projection_dim: int = 64,
    pretrained: bool = False,
    seed: int | None = 0,
    retrieval_layer: str = "embedding",
    whitening_dim: int | None = None,
    **kwargs: Any,
) -> Encoder:
    """Build an encoder by name.

    Every argument is checked before anything is built, so a network that would
    fail at its first forward pass is refused here, with the argument's name.

    Args:
        name: "cnn", "resnet18", "resnet50" or "vit".
        embedding_dim: size of the retrieval embedding (1..``MAX_DIM``).
        in_channels: 1 for Fashion-MNIST, 3 for RGB (1..``MAX_IN_CHANNELS``).
        image_size: input height and width the encoder expects (1..``MAX_IMAGE_SIZE``).
        projection_dim: output size of the projection head used in training (1..``MAX_DIM``).
        pretrained: ResNets only: start from torchvision's ImageNet weights (downloaded once).
        seed: seeds the random initialisation, 0..2**32-1 (None: leave torch's global RNG as it is).
        retrieval_layer: the output ``embed`` returns by default ("pooled", "embedding",
            or "whitened" when ``whitening_dim`` is given).
        whitening_dim: CNN only: give the encoder a "whitened" layer of this size (1..the
            conv map's size); its ``Whitening`` starts unfitted (``embed.fit_whitening`` fits it).
        **kwargs: architecture arguments (``ARCHITECTURE_ARGS`` has them with their defaults):
            for "cnn" ``conv_layers``, ``width``, ``fc_width`` (the CNN max-pools
            ``conv_layers - 1`` times, so ``image_size`` must be at least ``2**(conv_layers - 1)``);
            for "vit" ``patch_size`` (must divide ``image_size``), ``depth``, ``width``
            and ``heads`` (must divide ``width``). The ResNets take none.

    Returns:
        An ``Encoder`` in eval mode.

    Raises:
        ModelError: for an unknown name or argument, a bad value (naming it), or
            weights that cannot be downloaded.
    """
    return _build_encoder(name, embedding_dim, in_channels, image_size, projection_dim, pretrained, seed, retrieval_layer, kwargs,
                          download=True, whitening_dim=whitening_dim)


def _build_encoder(
    name: str,
    embedding_dim: int,
    in_channels: int,
    image_size: int,
    projection_dim: int,
    pretrained: bool,
    seed: int | None,
    retrieval_layer: str,
    kwargs: dict[str, Any],
    download: bool,
    whitening_dim: int | None = None,
) -> Encoder:
    """``build_encoder``, which ``load_checkpoint`` calls with ``download=False`` (the checkpoint has the weights)."""
    if not isinstance(name, str) or name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose one of {ENCODERS}")
    if retrieval_layer not in ("pooled", "embedding", "whitened"):
        raise ModelError(f"retrieval_layer must be 'pooled', 'embedding' or 'whitened' (the head is for training), got {retrieval_layer!r}")
    if whitening_dim is not None and name != "cnn":
        raise ModelError(f"whitening_dim: only the cnn has a whitened layer, not {name!r}")
    if retrieval_layer == "whitened" and whitening_dim is None:
        raise ModelError("retrieval_layer='whitened' needs whitening_dim (the size of the whitened layer)")
    if not isinstance(pretrained, bool):
        raise ModelError(f"pretrained must be True or False, got {pretrained!r}")
    if pretrained and not name.startswith("resnet"):
        raise ModelError(f"pretrained weights are offered for the ResNets only, not {name!r}")
    embedding_dim = check_int(embedding_dim, "embedding_dim", low=1, high=MAX_DIM, error=ModelError)
    in_channels = check_int(in_channels, "in_channels", low=1, high=MAX_IN_CHANNELS, error=ModelError)
    image_size = check_int(image_size, "image_size", low=1, high=MAX_IMAGE_SIZE, error=ModelError)
    projection_dim = check_int(projection_dim, "projection_dim", low=1, high=MAX_DIM, error=ModelError)
    seed = check_seed(seed, "seed", error=ModelError, allow_none=True)
    arch = _check_architecture(name, image_size, kwargs)
    settings = dict(
        embedding_dim=embedding_dim, in_channels=in_channels, image_size=image_size, projection_dim=projection_dim, pretrained=pretrained, seed=seed,
        retrieval_layer=retrieval_layer, **{arg: arch[arg] for arg in kwargs}
    )
    whitening = None
    if whitening_dim is not None:
        levels = arch["conv_layers"] - 1
        map_size = arch["width"] * 2**levels * (image_size // 2**levels) ** 2  # channels x h x w of the last conv block
        settings["whitening_dim"] = check_int(whitening_dim, "whitening_dim", low=1, high=min(map_size, MAX_DIM), error=ModelError)
        whitening = Whitening(map_size, settings["whitening_dim"])
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        if name == "cnn":
            backbone = _cnn(in_channels, image_size, embedding_dim, **arch)
        elif name == "vit":
            backbone = _vit(in_channels, image_size, embedding_dim, **arch)
        else:
            backbone = _resnet(int(name[6:]), in_channels, embedding_dim, pretrained, download)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        encoder = Encoder(name, backbone, embedding_dim, projection_dim, image_size, in_channels, mean, std, settings, retrieval_layer, whitening)
    return encoder.eval()


#: ``build_encoder``'s defaults, for a checkpoint config that lacks an argument.
_BUILD_DEFAULTS = {
    arg: parameter.default for arg, parameter in inspect.signature(build_encoder).parameters.items() if parameter.default is not inspect.Parameter.empty
}


class Checkpoint(NamedTuple):
    """What ``load_checkpoint`` returns.

    Attributes:
        encoder: the rebuilt encoder, in eval mode, on the CPU.
        extra: the JSON metadata ``save_encoder`` was given (provenance, training settings).
        state: the tensors ``save_encoder`` was given as ``state`` (e.g. an optimiser's), or ``{}``.
        format_version: the checkpoint format version the file was written in.
    """

    encoder: Encoder
    extra: dict[str, Any]
    state: dict[str, Any]
    format_version: int


def save_encoder(encoder: Encoder, path: str | Path, extra: dict[str, Any] | None = None, state: dict[str, Any] | None = None) -> Path:
    """Save an encoder's weights, its ``build_encoder`` arguments and metadata to one checksummed file.

    The file is a ``visual_search.container`` (magic ``CHECKPOINT_MAGIC``, format
    ``CHECKPOINT_VERSION``, written atomically): its JSON header holds the
    encoder's name, build config, ``version`` and ``extra``; its payload is the
    ``torch.save`` bytes of ``{"state_dict": weights on the CPU, "state": state}``.
    Before writing, ``state`` is read back the way ``load_checkpoint`` will read it
    (``weights_only=True``), so a checkpoint that could not be loaded is never written.

    Args:
        encoder: the encoder to save.
        path: the target file (its folder is created).
        extra: JSON-serialisable metadata (numbers, strings, lists, dicts with str keys).
        state: anything else that needs tensors, e.g. an optimiser's ``state_dict()``:
            tensors and dicts, lists, tuples, numbers and strings of them.

    Returns:
        The path written.

    Raises:
        ModelError: if ``encoder`` is not an ``Encoder``, ``extra`` is not
            JSON-serialisable, or ``state`` would not load with ``weights_only=True``.
    """
    if not isinstance(encoder, Encoder):
        raise ModelError(f"encoder: expected a visual_search.models.Encoder, got {type(encoder).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise ModelError(f"extra must be a dict (or None), got {type(extra).__name__}")
    if state is not None and not isinstance(state, dict):
        raise ModelError(f"state must be a dict (or None), got {type(state).__name__}")
    header = {"name": encoder.name, "config": encoder.config, "extra": extra or {}, "model_version": encoder.version}
    try:
        json.dumps(header, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{path}: extra and the encoder's config must be JSON-serialisable ({e}); pass tensors as state=") from e
    weights = encoder.state_dict()  # a fresh OrderedDict (with the modules' version metadata); move its tensors to the CPU
    for key, value in weights.items():
        weights[key] = value.detach().to("cpu")
    buffer = io.BytesIO()
    torch.save({"state_dict": weights, "state": state or {}}, buffer)
    payload = buffer.getvalue()
    if state:
        try:
            torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as e:  # the weights-only unpickler raises UnpicklingError, RuntimeError, ...
            raise ModelError(f"{path}: state cannot be read back with weights_only=True ({type(e).__name__}: {e})") from e
    return write_container(path, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, header, payload)


def _check_weights_fit(encoder: Encoder, weights: Any, path: Path) -> None:
    """Refuse saved weights whose keys, shapes or dtypes differ from the architecture's, or that hold NaN or infinity."""
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise ModelError(f"{path}: corrupt checkpoint (the weights are not a dict of named tensors)")
    expected = encoder.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        raise ModelError(f"{path}: the weights do not fit a {encoder.name} built from the saved config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for key, want in expected.items():
        got = weights[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ModelError(f"{path}: weight {key} is {got.dtype} {list(got.shape)}, but the architecture needs {want.dtype} {list(want.shape)}")
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise ModelError(f"{path}: weight {key} contains NaN or infinity")


def _starts_with(path: Path, prefix: bytes) -> bool:
    with path.open("rb") as f:
        return f.read(len(prefix)) == prefix


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint written by ``save_encoder``; rebuild its encoder.

    Nothing is unpickled before the whole file has passed its SHA-256 check, and
    then only with ``torch.load(weights_only=True)`` (which builds tensors and
    plain containers, never arbitrary objects). The weights must fit the
    architecture the header's config builds: same keys, shapes and dtypes, all finite.

    Args:
        path: the checkpoint file.

    Returns:
        A ``Checkpoint``: ``(encoder, extra, state, format_version)``.

    Raises:
        ModelError, naming the file: if it is missing, not a visual_search checkpoint
            (e.g. a plain ``torch.save`` file), truncated, altered (checksum), from a
            newer format version, or its weights do not fit the architecture.
    """
    path = Path(path)
    try:
        format_version, header, payload = read_container(
            path, CHECKPOINT_MAGIC, (1, CHECKPOINT_VERSION), ModelError, "checkpoint", max_bytes=MAX_CHECKPOINT_BYTES
        )
    except ModelError as e:
        if path.is_file() and _starts_with(path, b"PK\x03\x04"):
            raise ModelError(
                f"{e}. It looks like a plain torch.save file (as checkpoints were before format version 1); "
                "unverified pickles are not loaded. Load it with torch.load(weights_only=True) yourself if you trust it, "
                "rebuild the encoder and save it again with save_encoder"
            ) from e
        raise
    name, settings, extra = header.get("name"), header.get("config"), header.get("extra")
    if name not in ENCODERS or not isinstance(settings, dict) or not isinstance(extra, dict):
        raise ModelError(f"{path}: corrupt checkpoint header (needs an encoder name, a config and an extra dict)")
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as e:  # the payload passed its checksum, so anything failing here means "not usable"
        raise ModelError(f"{path}: the weights cannot be read ({type(e).__name__}: {e})") from e
    if not isinstance(blob, dict) or not isinstance(blob.get("state", {}), dict):
        raise ModelError(f"{path}: corrupt checkpoint payload (expected a dict with state_dict and state)")
    args = {**_BUILD_DEFAULTS, **settings}
    common = {key: args.pop(key) for key in _COMMON_ARGS}
    try:
        encoder = _build_encoder(name, **common, kwargs=args, download=False)  # the saved weights replace any download
    except ModelError as e:
        raise ModelError(f"{path}: the saved config does not build an encoder ({e})") from e
    _check_weights_fit(encoder, blob.get("state_dict"), path)
    try:
        encoder.load_state_dict(blob["state_dict"])
    except (RuntimeError, ValueError, TypeError) as e:
        raise ModelError(f"{path}: the weights do not fit the architecture ({type(e).__name__}: {e})") from e
    recorded = header.get("model_version")
    if recorded is not None and recorded != encoder.version:
        raise ModelError(f"{path}: the weights give model version {encoder.version}, but the header records {recorded}")
    return Checkpoint(encoder.eval(), extra, blob.get("state", {}), format_version)


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder saved by ``save_encoder``; returns ``(encoder, extra metadata)``.

    See ``load_checkpoint`` for what is verified (and for the saved ``state``).

    Raises:
        ModelError, naming the file: missing, foreign, truncated, altered, newer
            format, or weights that do not fit the architecture.
    """
    checkpoint = load_checkpoint(path)
    return checkpoint.encoder, checkpoint.extra


def load_pretrained(path: str | Path = CHECKPOINT_PATH) -> Encoder:
    """The committed SimCLR CNN, trained on the Fashion-MNIST train split, ready for ``embed``."""
    return load_encoder(path)[0]


def raw_pixel_encoder(image_size: int = 28, in_channels: int = 1) -> Encoder:
    """The raw-pixel baseline as an ``Encoder``: z-scored pixels, flattened and L2-normalised.

    It computes exactly ``embed.raw_pixel_embeddings``, but behind the encoder
    interface, so the service can serve it like any model (an online experiment's
    floor arm, chapter 08). It has no trained weights; its (unused) projection head is
    seeded, so its ``version`` is the same on every machine.
    """
    image_size = check_int(image_size, "image_size", low=1, high=MAX_IMAGE_SIZE, error=ModelError)
    in_channels = check_int(in_channels, "in_channels", low=1, high=MAX_IN_CHANNELS, error=ModelError)
    dim = image_size * image_size * in_channels
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = Encoder("pixels", _backbone(nn.Flatten(), nn.Identity()), dim, 1, image_size, in_channels,
                          FASHION_MNIST_MEAN, FASHION_MNIST_STD, {"image_size": image_size, "in_channels": in_channels})
    return encoder.eval()
