"""Smart crop: find the item in a bigger photo automatically, crop to it, and search with the crop.

A user rarely uploads a tight product shot. The item sits somewhere in a larger photo, among
clutter, and an encoder trained on tight 28 x 28 items sees it shrunk and off-centre when it is
given the whole photo. Pinterest's answer is to detect objects and search from each box; the
course has no detector, so this module finds the salient region in two cheap ways and measures
what each buys:

* **A pixel rule** (``saliency_box``): Fashion-MNIST items are bright on black, so the item is
  the largest bright connected blob. Smooth a little (noise makes single pixels bright), keep
  pixels above a share of the brightest, grow the mask by a pixel or two so a sandal's straps
  join into one blob, label the blobs, and take the bounding box of the one with the most
  brightness. No model, no training, and it fails exactly where its assumption fails (a dark
  item on a busy background).
* **The encoder's activation map** (``activation_maps``, ``activation_box``): the committed CNN
  is fully convolutional up to its global pooling, so it runs on a canvas of any size and its
  last conv map (``Encoder.feature_map``: 64 channels at a quarter of the resolution) says
  where it sees something. Summed over the channels, minus the response to an empty canvas (the
  BatchNorm biases and the zero padding light up a blank canvas too), and upsampled to the
  canvas, it is a saliency map the model learned, the idea behind CAM and Grad-CAM heat maps.
  Thresholded the same way, its largest blob gives a box.

Both boxes are made square (``square_box``), because the gallery's items are centred in square
frames and a stretched crop would not look like them, and are then usable with
``preprocess.crop`` (``(left, top, right, bottom)``, right and bottom exclusive).

``make_canvases`` builds the test: each query pasted at a random position of a larger black
canvas (optionally with smaller distractor items and Gaussian noise), with its true box kept.
``evaluate_smart_crop`` then searches the sample gallery (exact search, so only the crop
differs) from the whole canvas, a random crop of the same size as the auto-box, the two
auto-crops and the true box (the oracle, the ceiling), and reports class P@10 for each and the
IoU of each box with the true one.

Every bad input raises ``TopicsError`` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from visual_search import config, data, preprocess
from visual_search._checks import check_int, check_real, check_seed
from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.index import build_index
from visual_search.models import Encoder, load_pretrained

#: The side of a Fashion-MNIST item (and of the committed encoder's input).
ITEM_SIZE = 28
#: Defaults of the pixel rule: keep smoothed pixels above this share of the brightest, grow the mask this many pixels.
SALIENCY_THRESHOLD = 0.2
SALIENCY_SMOOTH = 1.0
SALIENCY_DILATE = 1
#: Defaults of the activation rule: keep map cells above this share of the strongest, and pad the square box this
#: many pixels (the map peaks on the item's middle, so its blob is a little smaller than the item).
ACTIVATION_THRESHOLD = 0.3
ACTIVATION_MARGIN = 2
#: The smallest gap (pixels) ``make_canvases`` leaves between a distractor and the item, so the two never touch.
DISTRACTOR_GAP = 4


# ---- checks --------------------------------------------------------------------------------------


def _images(images: object, name: str = "images") -> np.ndarray:
    """A non-empty uint8 ``[N, H, W]`` array (grayscale, as the course's data)."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 3:
        got = f"{images.dtype} {list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise TopicsError(f"{name} must be a uint8 array [N, H, W], got {got}")
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise TopicsError(f"{name} must hold at least one non-empty image, got shape {list(images.shape)}")
    return images


def _image(image: object, name: str = "image") -> np.ndarray:
    """A non-empty uint8 ``[H, W]`` image."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2 or image.size == 0:
        got = f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TopicsError(f"{name} must be a non-empty uint8 array [H, W], got {got}")
    return image


def _array(value: object, name: str, what: str) -> np.ndarray:
    """``np.asarray(value)``, refusing strings and ragged lists with a message that names ``value``."""
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        return np.asarray(value)
    except (TypeError, ValueError):
        raise TopicsError(f"{name} must be {what}, got {type(value).__name__} {value!r:.80}") from None


def _boxes(boxes: object, name: str = "boxes", shape: tuple[int, int] | None = None) -> np.ndarray:
    """Integer ``[N, 4]`` boxes ``(left, top, right, bottom)`` with right > left and bottom > top (inside ``shape`` if given)."""
    array = _array(boxes, name, "integer boxes [N, 4] (left, top, right, bottom)")
    if array.ndim != 2 or array.shape[1] != 4 or array.dtype.kind not in "iu":
        got = f"{array.dtype} {list(array.shape)}"
        raise TopicsError(f"{name} must be integer boxes [N, 4] (left, top, right, bottom), got {got}")
    array = array.astype(np.int64)
    if ((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1])).any():
        row = int(np.flatnonzero((array[:, 2] <= array[:, 0]) | (array[:, 3] <= array[:, 1]))[0])
        raise TopicsError(f"{name}: box {row} {array[row].tolist()} has zero size (right must exceed left, bottom top)")
    if shape is not None:
        height, width = shape
        outside = (array[:, 0] < 0) | (array[:, 1] < 0) | (array[:, 2] > width) | (array[:, 3] > height)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            raise TopicsError(f"{name}: box {row} {array[row].tolist()} lies outside the {width}x{height} image")
    return array


def _shape(shape: object) -> tuple[int, int]:
    """An image's ``(height, width)``, each a positive integer."""
    if isinstance(shape, (str, bytes)) or not isinstance(shape, (Sequence, np.ndarray)) or len(shape) != 2:
        raise TopicsError(f"shape must be (height, width), got {shape!r}")
    return (check_int(shape[0], "shape height", low=1, error=TopicsError), check_int(shape[1], "shape width", low=1, error=TopicsError))


def _share(value: object, name: str) -> float:
    return check_real(value, name, low=0.0, high=1.0, low_open=True, high_open=True, error=TopicsError)


def _cnn(encoder: object) -> Encoder:
    if not isinstance(encoder, Encoder):
        raise TopicsError(f"encoder must be a visual_search.models.Encoder, got {type(encoder).__name__}")
    if encoder.name != "cnn":
        raise TopicsError(f"encoder: the activation map needs the cnn (a plain conv trunk), not {encoder.name!r}")
    if encoder.in_channels != 1:
        raise TopicsError(f"encoder: expected a grayscale (1-channel) cnn, got {encoder.in_channels} channels")
    return encoder


# ---- canvases --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Canvases:
    """Queries pasted into larger canvases, with where each one went.

    Attributes:
        images: uint8 ``[N, S, S]``, the canvases.
        boxes: int64 ``[N, 4]``, each item's true box ``(left, top, right, bottom)``, right and bottom exclusive.
        distractor_boxes: int64 ``[N, n_distractors, 4]``, where each distractor went.
    """

    images: np.ndarray
    boxes: np.ndarray
    distractor_boxes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def make_canvases(
    images: np.ndarray,
    canvas_size: int = 56,
    n_distractors: int = 0,
    distractor_size: int = 10,
    noise_sigma: float = 0.0,
    seed: int = 0,
    distractor_pool: np.ndarray | None = None,
) -> Canvases:
    """Paste each image at a random position of a black ``canvas_size`` square: a query as a user would photograph it.

    Distractors are other items shrunk to ``distractor_size`` pixels, placed anywhere that
    keeps at least ``DISTRACTOR_GAP`` pixels from the item (they may overlap one another), so
    the canvas has clutter but the true box stays the item's alone. The noise is Gaussian, in
    grey levels, added to the whole canvas (clipped to 0..255), so the background is no longer
    a clean black.

    Args:
        images: uint8 ``[N, h, w]``, the items (e.g. the sample's queries).
        canvas_size: the canvas side, at least the larger of h and w.
        n_distractors: smaller items added to each canvas, 0..8.
        distractor_size: their side in pixels, 1..min(h, w) - 1 (smaller than the item, so the
            item stays the most salient thing).
        noise_sigma: the noise's standard deviation, 0..64 grey levels (0: none).
        seed: seeds the positions, the distractors drawn and the noise.
        distractor_pool: uint8 ``[M, h', w']`` to draw distractors from (default: ``images``;
            an image is never its own distractor when drawn from itself).

    Returns:
        ``Canvases`` (images, true boxes, distractor boxes).

    Raises:
        TopicsError: for bad arrays or parameters, or a canvas with no room for a distractor.
    """
    images = _images(images)
    n, height, width = images.shape
    canvas_size = check_int(canvas_size, "canvas_size", low=max(height, width), high=4_096, error=TopicsError)
    n_distractors = check_int(n_distractors, "n_distractors", low=0, high=8, error=TopicsError)
    noise_sigma = check_real(noise_sigma, "noise_sigma", low=0.0, high=64.0, error=TopicsError)
    seed = check_seed(seed, "seed", error=TopicsError)
    own_pool = distractor_pool is None
    pool = images if own_pool else _images(distractor_pool, "distractor_pool")
    if n_distractors:
        distractor_size = check_int(distractor_size, "distractor_size", low=1, high=min(height, width) - 1, error=TopicsError)
        if own_pool and n < 2:
            raise TopicsError("distractor_pool: with one image and no pool there is no other item to use as a distractor")
        small = np.stack([preprocess.resize(img, distractor_size) for img in pool])
    rng = np.random.default_rng(seed)
    out = np.zeros((n, canvas_size, canvas_size), dtype=np.uint8)
    boxes = np.empty((n, 4), dtype=np.int64)
    distractor_boxes = np.empty((n, n_distractors, 4), dtype=np.int64)
    for i in range(n):
        left, top = (int(v) for v in rng.integers(0, (canvas_size - width + 1, canvas_size - height + 1)))
        boxes[i] = (left, top, left + width, top + height)
        if n_distractors:
            spots = _free_spots(canvas_size, distractor_size, boxes[i])
            if len(spots) == 0:
                raise TopicsError(
                    f"canvas_size {canvas_size}: no room for a {distractor_size}-pixel distractor at least {DISTRACTOR_GAP} pixels "
                    f"from the {width}x{height} item at {boxes[i].tolist()}; use a bigger canvas or a smaller distractor_size"
                )
            for j in range(n_distractors):
                y, x = spots[rng.integers(len(spots))]
                pick = int(rng.integers(len(pool) - 1)) if own_pool else int(rng.integers(len(pool)))
                if own_pool and pick >= i:
                    pick += 1  # skip the item itself
                region = out[i, y : y + distractor_size, x : x + distractor_size]
                np.maximum(region, small[pick], out=region)  # overlapping distractors blend like light, not paint
                distractor_boxes[i, j] = (x, y, x + distractor_size, y + distractor_size)
        out[i, top : top + height, left : left + width] = images[i]
    if noise_sigma > 0:
        noisy = out.astype(np.float32) + rng.normal(0.0, noise_sigma, size=out.shape).astype(np.float32)
        out = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return Canvases(out, boxes, distractor_boxes)


def _free_spots(canvas_size: int, side: int, box: np.ndarray) -> np.ndarray:
    """Top-left corners ``(y, x)`` where a ``side`` square keeps ``DISTRACTOR_GAP`` pixels from ``box``."""
    positions = np.arange(canvas_size - side + 1)
    left, top, right, bottom = (int(v) for v in box)
    clear_x = (positions + side + DISTRACTOR_GAP <= left) | (positions >= right + DISTRACTOR_GAP)
    clear_y = (positions + side + DISTRACTOR_GAP <= top) | (positions >= bottom + DISTRACTOR_GAP)
    ys, xs = np.meshgrid(positions, positions, indexing="ij")
    free = clear_y[:, None] | clear_x[None, :]
    return np.stack([ys[free], xs[free]], axis=1)


# ---- boxes -----------------------------------------------------------------------------------------


def box_iou(a: np.ndarray | Sequence, b: np.ndarray | Sequence) -> np.ndarray:
    """Intersection over union of paired boxes ``(left, top, right, bottom)``, right and bottom exclusive.

    The detection world's measure of "found the right region": 1 for the same box, 0 for
    disjoint ones; 0.5 is the usual "found it" line (PASCAL VOC).

    Args:
        a, b: integer boxes ``[N, 4]`` (or one box each, ``[4]``).

    Returns:
        float64 ``[N]`` (or a 0-d array for one pair).
    """
    a, b = _array(a, "a", "integer boxes [N, 4] (left, top, right, bottom)"), _array(b, "b", "integer boxes [N, 4] (left, top, right, bottom)")
    single = a.ndim == 1 and b.ndim == 1
    a = _boxes(np.atleast_2d(a), "a")
    b = _boxes(np.atleast_2d(b), "b")
    if len(a) != len(b):
        raise TopicsError(f"a and b must hold the same number of boxes, got {len(a)} and {len(b)}")
    width = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    height = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = (width * height).astype(np.float64)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    iou = inter / (area(a) + area(b) - inter)
    return iou[0] if single else iou


def square_box(box: Sequence[int], shape: tuple[int, int], margin: int = 0) -> tuple[int, int, int, int]:
    """Grow ``box`` to a square around its centre (side = its longer side + 2 * margin), shifted to lie inside the image.

    The gallery's items sit centred in square frames: a tall trouser's crop padded to a
    square looks like a gallery trouser, while the tight crop, resized to 28 x 28, would be
    stretched sideways.

    Args:
        box: ``(left, top, right, bottom)``.
        shape: the image's ``(height, width)``.
        margin: extra pixels on every side, >= 0.

    Returns:
        The square box (its side capped at the image's shorter side).
    """
    height, width = _shape(shape)
    left, top, right, bottom = (int(v) for v in _boxes([box], "box", (height, width))[0])
    margin = check_int(margin, "margin", low=0, error=TopicsError)
    side = min(max(right - left, bottom - top) + 2 * margin, height, width)
    new_left = int(np.clip(round((left + right - side) / 2), 0, width - side))
    new_top = int(np.clip(round((top + bottom - side) / 2), 0, height - side))
    return new_left, new_top, new_left + side, new_top + side


def _largest_blob_box(score: np.ndarray, threshold: float, dilate: int) -> tuple[int, int, int, int] | None:
    """The bounding box of the blob of ``score >= threshold * max`` with the most total score; None if nothing is salient.

    ``dilate`` grows the mask before the blobs are labelled (8-connected), so pieces a few
    pixels apart count as one item; the box is taken over the undilated pixels of that blob.
    """
    peak = float(score.max())
    if not peak > 0:
        return None
    mask = score >= threshold * peak
    grown = ndimage.binary_dilation(mask, iterations=dilate) if dilate else mask
    labels, count = ndimage.label(grown, structure=np.ones((3, 3), dtype=bool))
    mass = ndimage.sum_labels(np.where(mask, score, 0.0), labels, index=np.arange(1, count + 1))
    best = int(np.argmax(mass)) + 1
    rows, cols = np.nonzero(mask & (labels == best))
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def saliency_box(
    image: np.ndarray,
    threshold: float = SALIENCY_THRESHOLD,
    smooth: float = SALIENCY_SMOOTH,
    dilate: int = SALIENCY_DILATE,
    square: bool = True,
    margin: int = 0,
) -> tuple[int, int, int, int]:
    """The box of the largest bright blob: the pixel rule for items that are bright on a dark background.

    Args:
        image: uint8 ``[H, W]``.
        threshold: keep smoothed pixels at least this share of the brightest, in (0, 1).
        smooth: the Gaussian blur's sigma in pixels before thresholding, 0..10 (0: none);
            it keeps isolated noisy pixels from forming blobs.
        dilate: grow the mask this many pixels before labelling blobs, 0..10.
        square: make the box square (``square_box``), as the gallery's frames are.
        margin: extra pixels on every side of a square box.

    Returns:
        ``(left, top, right, bottom)``; the whole image when nothing is brighter than black.
    """
    image = _image(image)
    threshold = _share(threshold, "threshold")
    smooth = check_real(smooth, "smooth", low=0.0, high=10.0, error=TopicsError)
    dilate = check_int(dilate, "dilate", low=0, high=10, error=TopicsError)
    score = image.astype(np.float32)
    if smooth > 0:
        score = ndimage.gaussian_filter(score, smooth)
    return _finish(_largest_blob_box(score, threshold, dilate), image.shape, square, margin)


def _finish(box: tuple[int, int, int, int] | None, shape: tuple[int, ...], square: bool, margin: int) -> tuple[int, int, int, int]:
    if not isinstance(square, (bool, np.bool_)):
        raise TopicsError(f"square must be True or False, got {square!r}")
    margin = check_int(margin, "margin", low=0, error=TopicsError)
    height, width = shape[:2]
    if box is None:
        return 0, 0, width, height
    return square_box(box, (height, width), margin) if square else box


def saliency_boxes(
    images: np.ndarray,
    threshold: float = SALIENCY_THRESHOLD,
    smooth: float = SALIENCY_SMOOTH,
    dilate: int = SALIENCY_DILATE,
    square: bool = True,
    margin: int = 0,
) -> np.ndarray:
    """``saliency_box`` for each image of a uint8 ``[N, H, W]`` batch: int64 ``[N, 4]`` (the options as ``saliency_box``)."""
    images = _images(images)
    return np.array([saliency_box(image, threshold, smooth, dilate, square, margin) for image in images], dtype=np.int64)


@torch.no_grad()
def activation_maps(encoder: Encoder, images: np.ndarray, subtract_background: bool = True, batch_size: int = 256) -> np.ndarray:
    """Where the CNN sees something: its last conv map summed over channels, upsampled to the image, scaled to [0, 1].

    The images are z-scored with the encoder's statistics at their own size (the CNN is
    convolutional up to its pooling, so a 56 x 56 canvas gives a 14 x 14 map instead of 7 x 7).
    ``Encoder.feature_map`` gives the map (its per-image L2 normalisation does not move the
    peak); the channels are summed (all are ReLU outputs, >= 0), the response to an all-black
    image of the same size is subtracted, negatives clipped, and the map is upsampled
    (bilinear) and divided by its maximum.

    Args:
        encoder: the committed CNN (``load_pretrained()``) or any grayscale "cnn" encoder.
        images: uint8 ``[N, H, W]``, at least 2**(poolings) pixels a side.
        subtract_background: subtract the blank image's response (BatchNorm biases and zero
            padding make a blank canvas light up, strongest at the borders).
        batch_size: images per forward pass.

    Returns:
        float32 ``[N, H, W]`` in [0, 1] (all 0 for an image the CNN sees nothing in).
    """
    encoder = _cnn(encoder)
    images = _images(images)
    if not isinstance(subtract_background, (bool, np.bool_)):
        raise TopicsError(f"subtract_background must be True or False, got {subtract_background!r}")
    batch_size = check_int(batch_size, "batch_size", low=1, error=TopicsError)
    n, height, width = images.shape
    trunk = list(encoder.backbone.features)
    pools = sum(isinstance(m, nn.MaxPool2d) for m in trunk)
    channels = [m for m in trunk if isinstance(m, nn.Conv2d)][-1].out_channels
    map_h, map_w = height // 2**pools, width // 2**pools
    if map_h < 1 or map_w < 1:
        raise TopicsError(f"images: {height}x{width} is too small for the cnn's {pools} poolings (need >= {2**pools} a side)")
    device = next(encoder.parameters()).device
    modes = [(module, module.training) for module in encoder.modules()]

    def summed(batch: np.ndarray) -> torch.Tensor:
        x = preprocess.preprocess_batch(batch, size=(height, width), mean=encoder.mean, std=encoder.std).to(device)
        return encoder.feature_map(x).reshape(len(batch), channels, map_h, map_w).sum(dim=1)

    try:
        encoder.eval()
        background = summed(np.zeros((1, height, width), dtype=np.uint8)) if subtract_background else 0.0
        parts = []
        for start in range(0, n, batch_size):
            response = (summed(images[start : start + batch_size]) - background).clamp(min=0)
            up = nn.functional.interpolate(response[:, None], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
            peak = up.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
            parts.append((up / peak).cpu().numpy().astype(np.float32))
    finally:
        for module, training in modes:
            module.training = training
    return np.concatenate(parts)


def activation_box(
    activation: np.ndarray, threshold: float = ACTIVATION_THRESHOLD, dilate: int = 0, square: bool = True, margin: int = ACTIVATION_MARGIN
) -> tuple[int, int, int, int]:
    """The box of the strongest blob of an activation map (one image's ``activation_maps`` output).

    Args:
        activation: float ``[H, W]``, >= 0.
        threshold: keep cells at least this share of the peak, in (0, 1).
        dilate: grow the mask this many pixels before labelling blobs, 0..10.
        square: make the box square; margin: extra pixels on every side of a square box.

    Returns:
        ``(left, top, right, bottom)``; the whole image when the map is all 0.
    """
    if not isinstance(activation, np.ndarray) or activation.ndim != 2 or activation.dtype.kind != "f" or activation.size == 0:
        got = f"{activation.dtype} {list(activation.shape)}" if isinstance(activation, np.ndarray) else type(activation).__name__
        raise TopicsError(f"activation must be a non-empty float array [H, W], got {got}")
    if not np.isfinite(activation).all() or (activation < 0).any():
        raise TopicsError("activation must be finite and >= 0 (as activation_maps returns it)")
    threshold = _share(threshold, "threshold")
    dilate = check_int(dilate, "dilate", low=0, high=10, error=TopicsError)
    return _finish(_largest_blob_box(activation, threshold, dilate), activation.shape, square, margin)


def activation_boxes(
    encoder: Encoder,
    images: np.ndarray,
    threshold: float = ACTIVATION_THRESHOLD,
    dilate: int = 0,
    square: bool = True,
    margin: int = ACTIVATION_MARGIN,
) -> np.ndarray:
    """``activation_box`` of each image's ``activation_maps``: int64 ``[N, 4]`` (the options as ``activation_box``)."""
    maps = activation_maps(encoder, images)
    return np.array([activation_box(a, threshold, dilate, square, margin) for a in maps], dtype=np.int64)


def random_boxes(shape: tuple[int, int], sides: np.ndarray, seed: int = 0) -> np.ndarray:
    """Square boxes of the given sides at uniformly random positions inside an image of ``shape``: the baseline crop.

    Args:
        shape: ``(height, width)`` of the images.
        sides: int ``[N]``, each box's side, 1..min(height, width) (e.g. the auto-boxes' sides,
            so the random crop keeps as many pixels and differs only in where it looks).
        seed: seeds the positions.

    Returns:
        int64 ``[N, 4]``.
    """
    height, width = _shape(shape)
    sides = np.asarray(sides)
    if sides.ndim != 1 or sides.dtype.kind not in "iu" or len(sides) == 0:
        raise TopicsError(f"sides must be a non-empty integer array [N], got {sides.dtype} {list(sides.shape)}")
    if sides.min() < 1 or sides.max() > min(height, width):
        raise TopicsError(f"sides must be in 1..{min(height, width)}, got {int(sides.min())}..{int(sides.max())}")
    rng = np.random.default_rng(check_seed(seed, "seed", error=TopicsError))
    sides = sides.astype(np.int64)
    left = np.floor(rng.random(len(sides)) * (width - sides + 1)).astype(np.int64)
    top = np.floor(rng.random(len(sides)) * (height - sides + 1)).astype(np.int64)
    return np.stack([left, top, left + sides, top + sides], axis=1)


def crop_to_boxes(images: np.ndarray, boxes: np.ndarray, size: int = ITEM_SIZE) -> np.ndarray:
    """Crop each image to its box (``preprocess.crop``) and resize to ``size`` square: a batch ``embed`` accepts.

    Returns:
        uint8 ``[N, size, size]``.
    """
    images = _images(images)
    boxes = _boxes(boxes, "boxes", images.shape[1:])
    if len(boxes) != len(images):
        raise TopicsError(f"boxes must hold one box per image ({len(images)}), got {len(boxes)}")
    size = check_int(size, "size", low=1, high=4_096, error=TopicsError)
    return np.stack([preprocess.resize(preprocess.crop(image, box), size) for image, box in zip(images, boxes.tolist())])


# ---- the measurement -------------------------------------------------------------------------------


def class_precision_at_k(query_vectors: np.ndarray, query_labels: np.ndarray, index, gallery_labels: np.ndarray, k: int = 10) -> float:
    """Mean share of each query's top ``k`` (exact search in ``index``) that has the query's class."""
    _, ids = index.search(query_vectors, k)
    return float((gallery_labels[ids] == query_labels[:, None]).mean())


def evaluate_smart_crop(
    canvas_size: int = 56,
    n_distractors: int = 0,
    noise_sigma: float = 0.0,
    n_queries: int | None = None,
    seed: int = 0,
    encoder: Encoder | None = None,
    sample: data.Sample | None = None,
    k: int = 10,
) -> dict[str, float]:
    """Search the sample gallery from canvases of its queries: whole, randomly cropped, auto-cropped, and cropped to the truth.

    Every variant is embedded by the same encoder and searched exactly in the same gallery
    index (``build_index("exact")``), so the only difference between them is the crop. The
    random crop has the saliency box's side, so it keeps as many pixels and differs only in
    where it looks. The true box is the oracle: with no noise its crop is the query itself.

    Args:
        canvas_size, n_distractors, noise_sigma: the canvases (``make_canvases``).
        n_queries: evenly spaced sample queries to use (class-balanced for multiples of 10;
            default 100 in fast mode, all 500 otherwise).
        seed: seeds the canvases (and, with ``seed + 1``, the random crops).
        encoder: default the committed CNN (``load_pretrained()``).
        sample: default ``data.load_sample()``.
        k: the cut-off of the class precision, 1..100.

    Returns:
        ``{"n_queries", "canvas_size", "n_distractors", "noise_sigma",
        "P@k whole canvas", "P@k random crop", "P@k saliency crop", "P@k activation crop",
        "P@k true box", "IoU random", "IoU saliency", "IoU activation",
        "found saliency", "found activation"}`` with k filled in; IoU is the mean IoU with
        the true box, "found" the share of queries with IoU >= 0.5.
    """
    sample = data.load_sample() if sample is None else sample
    if not isinstance(sample, data.Sample):
        raise TopicsError(f"sample must be a visual_search.data.Sample, got {type(sample).__name__}")
    encoder = _cnn(load_pretrained() if encoder is None else encoder)
    k = check_int(k, "k", low=1, high=100, error=TopicsError)
    total = len(sample.query_images)
    n_queries = check_int((100 if config.is_fast() else total) if n_queries is None else n_queries, "n_queries", low=1, high=total, error=TopicsError)
    pick = np.linspace(0, total - 1, n_queries).round().astype(np.int64)
    queries, labels = sample.query_images[pick], sample.query_labels[pick]
    canvases = make_canvases(queries, canvas_size, n_distractors, noise_sigma=noise_sigma, seed=seed, distractor_pool=sample.gallery_images)

    gallery = embed(encoder, sample.gallery_images, progress=False)
    index = build_index("exact", gallery.shape[1], metric="ip", model_version=encoder.version).add(gallery, model_version=encoder.version)
    shape = canvases.images.shape[1:]
    salient = saliency_boxes(canvases.images)
    boxes = {
        "random crop": random_boxes(shape, salient[:, 2] - salient[:, 0], seed=(seed + 1) % 2**32),
        "saliency crop": salient,
        "activation crop": activation_boxes(encoder, canvases.images),
        "true box": canvases.boxes,
    }
    result: dict[str, float] = {"n_queries": n_queries, "canvas_size": canvas_size, "n_distractors": n_distractors, "noise_sigma": float(noise_sigma)}
    whole = embed(encoder, canvases.images, progress=False)  # embed resizes the whole canvas to the encoder's input
    result[f"P@{k} whole canvas"] = class_precision_at_k(whole, labels, index, sample.gallery_labels, k)
    for name, box in boxes.items():
        vectors = embed(encoder, crop_to_boxes(canvases.images, box, encoder.image_size), progress=False)
        result[f"P@{k} {name}"] = class_precision_at_k(vectors, labels, index, sample.gallery_labels, k)
    for name, key in (("random", "random crop"), ("saliency", "saliency crop"), ("activation", "activation crop")):
        iou = box_iou(boxes[key], canvases.boxes)
        result[f"IoU {name}"] = float(iou.mean())
        if name != "random":
            result[f"found {name}"] = float((iou >= 0.5).mean())
    return result
