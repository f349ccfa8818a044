"""Encoders: networks that map a preprocessed image to an L2-normalised embedding.

Every encoder is an ``Encoder`` with three outputs, from the input upwards:

* ``"pooled"``: the backbone's *features* (conv trunk + global pooling for the CNN
  and ResNet, the class token for the ViT);
* ``"embedding"``: the backbone's *neck* (the design notes' fully connected
  layers) maps them to an ``embedding_dim`` vector;
* ``"head"``: a small projection MLP on top, used only by the training loss.

Following SimCLR, the loss is computed on the head and the head is dropped for
retrieval: layers close to the loss learn to discard what the loss does not
reward (exact brightness, position), which retrieval may need. Which layer
retrieves best is measured, not assumed (notebook 04, ``make bench``); an encoder
remembers its choice in ``retrieval_layer``, and ``embed`` uses it. Every output
is L2-normalised.

An encoder also carries its own preprocessing settings (input size, channels,
mean, std), so ``visual_search.embed.embed`` can feed it raw uint8 images.

    enc = build_encoder("cnn", embedding_dim=128)
    enc = build_encoder("resnet18", pretrained=True)   # downloads ImageNet weights once
    enc = build_encoder("vit", patch_size=7, depth=4, width=128)
    enc = load_pretrained()                             # the committed SimCLR CNN
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from visual_search import config
from visual_search.preprocess import FASHION_MNIST_MEAN, FASHION_MNIST_STD
from visual_search.errors import ModelError  # noqa: F401  (re-exported: raised here, importable from here)

#: The committed SimCLR CNN (see README "Benchmarks" for how it was trained).
CHECKPOINT_PATH = config.REPO_ROOT / "checkpoints" / "simclr_cnn.pt"
ENCODERS = ("cnn", "resnet18", "resnet50", "vit")
#: ImageNet statistics, for pretrained torchvision weights.
IMAGENET_MEAN, IMAGENET_STD = 0.449, 0.226  # the mean of torchvision's per-channel values




LAYERS = ("pooled", "embedding", "head")


class Encoder(nn.Module):
    """A backbone (``features`` then ``neck``) that outputs ``embedding_dim`` values, plus a projection head.

    Attributes:
        name: which architecture ("cnn", "resnet18", ...).
        config: the keyword arguments ``build_encoder`` was called with (saved in checkpoints).
        image_size, in_channels, mean, std: the preprocessing this encoder expects.
        retrieval_layer: the output ``embed`` uses by default (one of ``LAYERS``).
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

    def forward(self, x: torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """Map preprocessed images ``[N, C, H, W]`` to unit-length vectors ``[N, D]``.

        Args:
            x: float32 images, already resized and z-scored for this encoder.
            layer: "pooled", "embedding" or "head" (None: ``retrieval_layer``).
        """
        layer = layer or self.retrieval_layer
        if layer not in LAYERS:
            raise ModelError(f"layer must be one of {LAYERS}, got {layer!r}")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ModelError(f"x: expected [N, {self.in_channels}, H, W], got {list(x.shape)}")
        h = self.backbone.features(x)
        if layer != "pooled":
            h = self.backbone.neck(h)
        if layer == "head":
            h = self.head(h)
        return nn.functional.normalize(h, dim=1)

    def num_parameters(self, head: bool = False) -> int:
        """Trainable parameters of the backbone (and of the head, if asked)."""
        modules = [self.backbone, self.head] if head else [self.backbone]
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)


def _backbone(features: nn.Module, neck: nn.Module) -> nn.Sequential:
    """``features`` (image -> pooled vector) then ``neck`` (pooled vector -> embedding), addressable by name."""
    return nn.Sequential(OrderedDict(features=features, neck=neck))


def _cnn(in_channels: int, image_size: int, embedding_dim: int, conv_layers: int = 3, width: int = 32, fc_width: int = 256) -> nn.Module:
    """The design notes' CNN: conv blocks that halve the map and double the channels, then FC layers, then the embedding."""
    if conv_layers < 1 or width < 1 or fc_width < 1:
        raise ModelError(f"cnn needs conv_layers, width and fc_width >= 1, got {conv_layers}, {width}, {fc_width}")
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


def _resnet(depth: int, in_channels: int, embedding_dim: int, pretrained: bool) -> nn.Module:
    """torchvision's ResNet with a stem for small images and an ``embedding_dim`` output layer.

    From scratch, the 7x7 stride-2 conv and the max-pool (which shrink 224 px to
    56 px) become one 3x3 stride-1 conv, so a 28 px image keeps its detail. With
    ImageNet weights the pretrained 7x7 conv is kept (its filters are the point),
    only the max-pool goes, and for one input channel its RGB filters are summed,
    which is what a grey image replicated into R, G and B would see.
    """
    from torchvision import models

    builder, weights_enum = {18: (models.resnet18, models.ResNet18_Weights), 50: (models.resnet50, models.ResNet50_Weights)}[depth]
    weights = weights_enum.DEFAULT if pretrained else None
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
            net.conv1.weight.data.copy_(w)
    else:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    neck = nn.Linear(net.fc.in_features, embedding_dim)
    net.fc = nn.Identity()  # the features end at global average pooling
    return _backbone(net, neck)


def _vit(in_channels: int, image_size: int, embedding_dim: int, patch_size: int = 7, depth: int = 4, width: int = 128, heads: int = 4) -> nn.Module:
    """torchvision's VisionTransformer sized for small images: 28 px in 7 px patches is a 4x4 grid of 16 tokens."""
    from torchvision.models import VisionTransformer

    if image_size % patch_size:
        raise ModelError(f"vit: image_size {image_size} must be a multiple of patch_size {patch_size}")
    if width % heads:
        raise ModelError(f"vit: width {width} must be a multiple of heads {heads}")
    net = VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=depth, num_heads=heads, hidden_dim=width, mlp_dim=2 * width, num_classes=embedding_dim
    )
    net.conv_proj = nn.Conv2d(in_channels, width, kernel_size=patch_size, stride=patch_size)  # torchvision assumes 3 channels
    # torchvision zero-initialises the classifier, which suits fine-tuning a classifier but would
    # make every embedding the zero vector before training: use a standard random init instead.
    neck = nn.Linear(width, embedding_dim)
    net.heads = nn.Identity()  # the features are the class token
    return _backbone(net, neck)


def build_encoder(
    name: str,
    embedding_dim: int = 128,
    in_channels: int = 1,
    image_size: int = 28,
    projection_dim: int = 64,
    pretrained: bool = False,
    seed: int | None = 0,
    retrieval_layer: str = "embedding",
    **kwargs: Any,
) -> Encoder:
    """Build an encoder by name.

    Args:
        name: "cnn", "resnet18", "resnet50" or "vit".
        embedding_dim: size of the retrieval embedding.
        in_channels: 1 for Fashion-MNIST, 3 for RGB.
        image_size: input height and width the encoder expects.
        projection_dim: output size of the projection head used in training.
        pretrained: ResNets only: start from torchvision's ImageNet weights (downloaded once).
        seed: seeds the random initialisation (None: leave torch's global RNG as it is).
        retrieval_layer: the output ``embed`` returns by default ("pooled" or "embedding").
        **kwargs: architecture arguments: for "cnn" ``conv_layers``, ``width``,
            ``fc_width``; for "vit" ``patch_size``, ``depth``, ``width``, ``heads``.

    Returns:
        An ``Encoder`` in eval mode.

    Raises:
        ModelError: for an unknown name or argument, or weights that cannot be downloaded.
    """
    if name not in ENCODERS:
        raise ModelError(f"unknown encoder {name!r}; choose one of {ENCODERS}")
    if retrieval_layer not in ("pooled", "embedding"):
        raise ModelError(f"retrieval_layer must be 'pooled' or 'embedding' (the head is for training), got {retrieval_layer!r}")
    if pretrained and not name.startswith("resnet"):
        raise ModelError(f"pretrained weights are offered for the ResNets only, not {name!r}")
    for arg, value in (("embedding_dim", embedding_dim), ("in_channels", in_channels), ("image_size", image_size), ("projection_dim", projection_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{arg} must be a positive integer, got {value!r}")
    settings = dict(
        embedding_dim=embedding_dim, in_channels=in_channels, image_size=image_size, projection_dim=projection_dim, pretrained=pretrained, seed=seed,
        retrieval_layer=retrieval_layer, **kwargs
    )
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        try:
            if name == "cnn":
                backbone = _cnn(in_channels, image_size, embedding_dim, **kwargs)
            elif name == "vit":
                backbone = _vit(in_channels, image_size, embedding_dim, **kwargs)
            else:
                if kwargs:
                    raise TypeError(f"unexpected arguments {sorted(kwargs)}")
                backbone = _resnet(int(name[6:]), in_channels, embedding_dim, pretrained)
        except TypeError as e:
            raise ModelError(f"{name}: {e}") from e
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pretrained else (FASHION_MNIST_MEAN, FASHION_MNIST_STD)
        encoder = Encoder(name, backbone, embedding_dim, projection_dim, image_size, in_channels, mean, std, settings, retrieval_layer)
    return encoder.eval()


def save_encoder(encoder: Encoder, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Save weights and the ``build_encoder`` arguments (plus ``extra`` metadata) to one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"name": encoder.name, "config": encoder.config, "state_dict": encoder.state_dict(), "extra": extra or {}}, tmp)
    tmp.replace(path)  # atomic: a crash never leaves half a checkpoint


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder saved by ``save_encoder``; returns ``(encoder, extra metadata)``.

    Raises:
        ModelError: if the file is missing, not a checkpoint, or does not fit the architecture.
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        settings = dict(blob["config"])
        settings["pretrained"] = False  # the saved weights replace any download
        encoder = build_encoder(blob["name"], **settings)
        encoder.load_state_dict(blob["state_dict"])
    except FileNotFoundError as e:
        raise ModelError(f"{path}: no such checkpoint") from e
    except (KeyError, TypeError, RuntimeError, EOFError, OSError) as e:
        raise ModelError(f"{path}: not a usable encoder checkpoint ({type(e).__name__}: {e})") from e
    if blob["config"].get("pretrained"):
        encoder.mean, encoder.std = IMAGENET_MEAN, IMAGENET_STD
        encoder.config["pretrained"] = True
    return encoder.eval(), blob.get("extra", {})


def load_pretrained(path: str | Path = CHECKPOINT_PATH) -> Encoder:
    """The committed SimCLR CNN, trained on the Fashion-MNIST train split, ready for ``embed``."""
    return load_encoder(path)[0]
