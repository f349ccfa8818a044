"""Smart crop: canvases keep the item where they say, boxes and IoU agree with torchvision, the pixel rule and the
CNN's activation map find the item, and cropping to them recovers most of the retrieval the whole canvas loses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision.ops import box_iou as tv_box_iou
from torchvision.ops import masks_to_boxes

from visual_search.embed import embed
from visual_search.errors import TopicsError
from visual_search.index import exact_search
from visual_search.models import build_encoder
from visual_search.topics import smart_crop as sc


@pytest.fixture(scope="module")
def queries(sample):
    return sample.query_images[::10]  # 50, five of each class


# ---- canvases -------------------------------------------------------------------------------------


def test_canvas_holds_the_item_in_its_box_and_black_elsewhere(queries):
    c = sc.make_canvases(queries, canvas_size=56, seed=3)
    assert c.images.shape == (50, 56, 56) and c.images.dtype == np.uint8 and c.boxes.shape == (50, 4)
    assert (c.boxes[:, 2] - c.boxes[:, 0] == 28).all() and (c.boxes[:, 3] - c.boxes[:, 1] == 28).all()
    assert (c.boxes >= 0).all() and (c.boxes <= 56).all()
    for image, item, (left, top, right, bottom) in zip(c.images, queries, c.boxes):
        assert np.array_equal(image[top:bottom, left:right], item)
        outside = image.copy()
        outside[top:bottom, left:right] = 0
        assert not outside.any()
    assert len(np.unique(c.boxes[:, :2], axis=0)) > 30  # random positions, not one


def test_canvases_are_seeded(queries):
    a, b = sc.make_canvases(queries, 56, 2, noise_sigma=8.0, seed=1), sc.make_canvases(queries, 56, 2, noise_sigma=8.0, seed=1)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.boxes, sc.make_canvases(queries, 56, 2, noise_sigma=8.0, seed=2).boxes)


def test_distractors_keep_their_distance_and_noise_has_its_sigma(queries, sample):
    c = sc.make_canvases(queries, 84, n_distractors=3, distractor_size=10, seed=0, distractor_pool=sample.gallery_images)
    assert c.distractor_boxes.shape == (50, 3, 4)
    for box, distractors in zip(c.boxes, c.distractor_boxes):
        for d in distractors:
            assert d[2] - d[0] == 10 and d[3] - d[1] == 10
            gap_x = max(box[0] - d[2], d[0] - box[2])
            gap_y = max(box[1] - d[3], d[1] - box[3])
            assert max(gap_x, gap_y) >= sc.DISTRACTOR_GAP
    clean = sc.make_canvases(queries, 56, seed=4)
    noisy = sc.make_canvases(queries, 56, noise_sigma=10.0, seed=4)
    assert np.array_equal(clean.boxes, noisy.boxes)
    black = clean.images == 0  # where the noise is not clipped at 255 and only half clipped at 0
    residual = noisy.images.astype(float) - clean.images
    assert 0.3 * 10 < residual[black].mean() + 0.0 < 0.5 * 10  # E[max(0, N(0, s))] = s / sqrt(2 pi) ~ 0.40 s


def test_the_true_box_crop_is_the_query_itself(queries):
    c = sc.make_canvases(queries, 84, seed=0)
    assert np.array_equal(sc.crop_to_boxes(c.images, c.boxes), queries)


# ---- boxes ---------------------------------------------------------------------------------------


def test_box_iou_matches_torchvision():
    rng = np.random.default_rng(0)
    corner = rng.integers(0, 40, size=(200, 2))
    size = rng.integers(1, 30, size=(200, 2))
    a = np.concatenate([corner, corner + size], axis=1)
    corner = rng.integers(0, 40, size=(200, 2))
    b = np.concatenate([corner, corner + rng.integers(1, 30, size=(200, 2))], axis=1)
    expected = tv_box_iou(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)).diagonal().numpy()
    np.testing.assert_allclose(sc.box_iou(a, b), expected, rtol=1e-12)
    assert sc.box_iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert sc.box_iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0  # touching, right edge exclusive
    assert sc.box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)


def test_square_box_centres_and_stays_inside():
    assert sc.square_box((10, 20, 20, 40), (56, 56)) == (5, 20, 25, 40)  # 10 wide, 20 tall: a 20-square on the centre
    assert sc.square_box((0, 0, 10, 4), (56, 56), margin=2) == (0, 0, 14, 14)  # shifted back inside
    assert sc.square_box((0, 0, 50, 10), (30, 60)) == (10, 0, 40, 30)  # capped at the shorter side


def test_pixel_rule_picks_the_biggest_bright_blob():
    image = np.zeros((40, 60), np.uint8)
    image[5:25, 30:42] = 200  # the item, 12 x 20
    image[30:34, 2:6] = 255  # a brighter but smaller blob
    assert sc.saliency_box(image, smooth=0.0, square=False) == (30, 5, 42, 25)
    assert sc.saliency_box(image, smooth=0.0) == (26, 5, 46, 25)
    assert sc.saliency_box(np.zeros((30, 30), np.uint8)) == (0, 0, 30, 30)  # nothing salient: the whole image


def test_pixel_rule_box_matches_torchvision_masks_to_boxes(sample):
    checked = 0
    for image in sample.query_images[::5]:
        mask = image >= 0.2 * image.max()
        if ndimage.label(mask, structure=np.ones((3, 3)))[1] != 1:
            continue  # several blobs: the rule keeps one, masks_to_boxes spans all
        expected = masks_to_boxes(torch.tensor(mask[None])).int()[0].tolist()
        assert sc.saliency_box(image, threshold=0.2, smooth=0.0, dilate=0, square=False) == (
            expected[0], expected[1], expected[2] + 1, expected[3] + 1)  # torchvision's right and bottom are inclusive
        checked += 1
    assert checked >= 30


def test_auto_boxes_find_the_item(queries, encoder):
    c = sc.make_canvases(queries, 56, n_distractors=2, noise_sigma=8.0, seed=0)
    assert sc.box_iou(sc.saliency_boxes(c.images), c.boxes).mean() > 0.85  # measured 0.93 on this set
    assert sc.box_iou(sc.activation_boxes(encoder, c.images), c.boxes).mean() > 0.6  # measured 0.71


def test_activation_map_peaks_on_the_item_and_moves_with_it(queries, encoder):
    c = sc.make_canvases(queries, 56, seed=0)
    maps = sc.activation_maps(encoder, c.images)
    assert maps.shape == (50, 56, 56) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    rows, cols = np.unravel_index(maps.reshape(50, -1).argmax(axis=1), (56, 56))
    inside = (c.boxes[:, 0] <= cols) & (cols < c.boxes[:, 2]) & (c.boxes[:, 1] <= rows) & (rows < c.boxes[:, 3])
    assert inside.mean() >= 0.95
    # the CNN is convolutional: an item moved by 8 pixels (two map cells) moves the map by 8 pixels
    pair = np.zeros((2, 84, 84), np.uint8)
    pair[0, 20:48, 20:48] = queries[7]
    pair[1, 28:56, 28:56] = queries[7]
    a, b = sc.activation_maps(encoder, pair)
    np.testing.assert_allclose(b[26:78, 26:78], a[18:70, 18:70], atol=1e-4)
    assert not sc.activation_maps(encoder, np.zeros((1, 56, 56), np.uint8)).any()  # an empty canvas shows nothing


# ---- the measurement -----------------------------------------------------------------------------


def test_true_box_on_clean_canvases_scores_as_the_plain_queries(sample, encoder):
    result = sc.evaluate_smart_crop(56, n_queries=50, encoder=encoder, sample=sample)
    pick = np.linspace(0, len(sample.query_images) - 1, 50).round().astype(int)
    _, ids = exact_search(embed(encoder, sample.query_images[pick]), embed(encoder, sample.gallery_images), 10)
    plain = float((sample.gallery_labels[ids] == sample.query_labels[pick][:, None]).mean())
    assert result["P@10 true box"] == pytest.approx(plain)


def test_auto_crop_recovers_what_the_whole_canvas_loses(sample, encoder):
    r = sc.evaluate_smart_crop(56, n_distractors=2, noise_sigma=8.0, n_queries=100, encoder=encoder, sample=sample)
    # measured on this setting: whole 0.15, random 0.14, saliency 0.75, activation 0.62, true box 0.75
    assert r["P@10 saliency crop"] > r["P@10 whole canvas"] + 0.4
    assert r["P@10 saliency crop"] > r["P@10 random crop"] + 0.4
    assert r["P@10 activation crop"] > r["P@10 whole canvas"] + 0.3
    assert r["P@10 true box"] >= r["P@10 saliency crop"] - 0.03
    assert r["IoU saliency"] > 0.85 and r["IoU activation"] > 0.6 and r["IoU random"] < 0.5
    assert r["found saliency"] > 0.9 and 0.0 <= r["found activation"] <= 1.0


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"images": np.zeros((2, 28, 28), np.float32)}, "images"),
        ({"images": np.zeros((28, 28), np.uint8)}, "images"),
        ({"canvas_size": 20}, "canvas_size"),
        ({"canvas_size": True}, "canvas_size"),
        ({"n_distractors": -1}, "n_distractors"),
        ({"n_distractors": 9}, "n_distractors"),
        ({"n_distractors": 1, "distractor_size": 28}, "distractor_size"),
        ({"noise_sigma": -1.0}, "noise_sigma"),
        ({"noise_sigma": float("nan")}, "noise_sigma"),
        ({"seed": -1}, "seed"),
        ({"n_distractors": 1, "distractor_pool": np.zeros((3, 28, 28), np.int64)}, "distractor_pool"),
        ({"canvas_size": 30, "n_distractors": 1}, "canvas_size 30: no room"),
        ({"images": np.zeros((1, 28, 28), np.uint8), "n_distractors": 1}, "distractor_pool"),
    ],
)
def test_make_canvases_refuses_bad_input(kwargs, match):
    args = {"images": np.zeros((4, 28, 28), np.uint8), **kwargs}
    with pytest.raises(TopicsError, match=match):
        sc.make_canvases(**args)


def test_box_functions_refuse_bad_input():
    image = np.zeros((28, 28), np.uint8)
    cases = [
        (lambda: sc.box_iou(np.zeros((2, 4), int) + [0, 0, 1, 1], np.zeros((3, 4), int) + [0, 0, 1, 1]), "same number"),
        (lambda: sc.box_iou([0, 0, 0, 5], [0, 0, 5, 5]), "a: box 0"),
        (lambda: sc.box_iou([0.0, 0.0, 5.0, 5.0], [0, 0, 5, 5]), "a must be integer boxes"),
        (lambda: sc.square_box((0, 0, 40, 5), (28, 28)), "outside the 28x28"),
        (lambda: sc.square_box((0, 0, 4, 5), (28, 28), margin=-1), "margin"),
        (lambda: sc.square_box(5, (28, 28)), "box must be integer boxes"),
        (lambda: sc.square_box((0, 0, 4, 5), 28), "shape"),
        (lambda: sc.box_iou([[0, 0, 1, 1], [0, 0, 1]], [[0, 0, 1, 1], [0, 0, 1, 1]]), "a must be integer boxes"),
        (lambda: sc.random_boxes((28, 0), np.array([5])), "shape width"),
        (lambda: sc.saliency_box(image, threshold=0.0), "threshold"),
        (lambda: sc.saliency_box(image, threshold=1.0), "threshold"),
        (lambda: sc.saliency_box(image, smooth=-1.0), "smooth"),
        (lambda: sc.saliency_box(image, dilate=11), "dilate"),
        (lambda: sc.saliency_box(image, square="yes"), "square"),
        (lambda: sc.saliency_box(np.zeros((28, 28, 3), np.uint8)), "image"),
        (lambda: sc.activation_box(np.zeros((28, 28), np.uint8)), "activation"),
        (lambda: sc.activation_box(-np.ones((28, 28), np.float32)), "activation"),
        (lambda: sc.activation_box(np.full((28, 28), np.nan, np.float32)), "activation"),
        (lambda: sc.random_boxes((28, 28), np.array([29])), "sides"),
        (lambda: sc.random_boxes((28, 28), np.array([5.0])), "sides"),
        (lambda: sc.random_boxes((28, 28), np.array([], int)), "sides"),
        (lambda: sc.crop_to_boxes(np.zeros((2, 28, 28), np.uint8), np.array([[0, 0, 5, 5]])), "one box per image"),
        (lambda: sc.crop_to_boxes(np.zeros((1, 28, 28), np.uint8), np.array([[0, 0, 30, 5]])), "boxes: box 0"),
        (lambda: sc.crop_to_boxes(np.zeros((1, 28, 28), np.uint8), np.array([[0, 0, 5, 5]]), size=0), "size"),
    ]
    for call, match in cases:
        with pytest.raises(TopicsError, match=match):
            call()


def test_activation_and_measurement_refuse_bad_input(encoder, sample):
    canvases = np.zeros((1, 56, 56), np.uint8)
    with pytest.raises(TopicsError, match="encoder must be"):
        sc.activation_maps("cnn", canvases)
    with pytest.raises(TopicsError, match="encoder: the activation map needs the cnn"):
        sc.activation_maps(build_encoder("vit"), canvases)
    with pytest.raises(TopicsError, match="images"):
        sc.activation_maps(encoder, canvases.astype(np.float32))
    with pytest.raises(TopicsError, match="too small"):
        sc.activation_maps(encoder, np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(TopicsError, match="subtract_background"):
        sc.activation_maps(encoder, canvases, subtract_background=1)
    for kwargs, match in [({"n_queries": 0}, "n_queries"), ({"n_queries": 501}, "n_queries"), ({"k": 0}, "k must"),
                          ({"sample": "sample"}, "sample"), ({"encoder": build_encoder("vit")}, "encoder"),
                          ({"canvas_size": 27}, "canvas_size")]:
        with pytest.raises(TopicsError, match=match):
            sc.evaluate_smart_crop(**{"encoder": encoder, "sample": sample, **kwargs})
