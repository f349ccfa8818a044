"""ScaNN-specific checks, beyond the conformance suite: its parameters, its knobs, its writes and files,
and that the wrapper returns what ScaNN itself returns for the same config."""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.index import VectorIndexError, build_index, load_index

DIM = 16
K = 10


@pytest.fixture(scope="module")
def data():
    """2,000 points in 30 Gaussian clusters (16-d) and 60 queries near them."""
    rng = np.random.default_rng(3)
    centres = rng.normal(0, 3, (30, DIM))
    x = (centres[rng.integers(30, size=2000)] + rng.normal(0, 1, (2000, DIM))).astype(np.float32)
    q = (x[rng.choice(2000, 60, replace=False)] + rng.normal(0, 0.7, (60, DIM))).astype(np.float32)
    return x, q


def scann(metric="l2", **params):
    return build_index("scann", DIM, metric, **{"num_leaves": 32, "num_leaves_to_search": 4, "reorder": 40, **params})


def exact(x, q, metric="l2", k=K, ids=None):
    return build_index("exact", DIM, metric).add(x, ids).search(q, k)


def recall(found, truth):
    return np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)])


@pytest.mark.parametrize("params, message", [
    ({"num_leaves": 0}, "scann: num_leaves"),
    ({"num_leaves": 2.0}, "scann: num_leaves"),
    ({"num_leaves_to_search": 0}, "scann: num_leaves_to_search"),
    ({"training_sample_size": 15}, "scann: training_sample_size"),
    ({"dimensions_per_block": 0}, "scann: dimensions_per_block"),
    ({"dimensions_per_block": DIM + 1}, "dimensions_per_block must be at most dim=16"),
    ({"anisotropic_quantization_threshold": 0}, "scann: anisotropic_quantization_threshold"),
    ({"anisotropic_quantization_threshold": 1.5}, "scann: anisotropic_quantization_threshold"),
    ({"anisotropic_quantization_threshold": float("nan")}, "scann: anisotropic_quantization_threshold"),
    ({"anisotropic_quantization_threshold": "0.2"}, "scann: anisotropic_quantization_threshold"),
    ({"reorder": -1}, "scann: reorder"),
    ({"reorder": True}, "scann: reorder"),
    ({"reorder": 2.5}, "scann: reorder"),
    ({"seed": -1}, "scann: seed"),
    ({"seed": 2**33}, "scann: seed"),
])
def test_bad_parameters_are_refused_naming_them(params, message):
    with pytest.raises(VectorIndexError, match=message):
        scann(**params)


def test_bad_search_parameters_are_refused_naming_them(data):
    x, q = data
    index = scann().train(x).add(x)
    for params, message in [({"leaves_to_search": 0}, "search parameter leaves_to_search"),
                            ({"leaves_to_search": 1.5}, "search parameter leaves_to_search"),
                            ({"pre_reorder_num_neighbors": 0}, "search parameter pre_reorder_num_neighbors"),
                            ({"pre_reorder_num_neighbors": True}, "search parameter pre_reorder_num_neighbors"),
                            ({"nprobe": 4}, r"unknown search parameter\(s\) \['nprobe'\]")]:
        with pytest.raises(VectorIndexError, match=message):
            index.search(q, K, params=params)
    off = scann(reorder=0).train(x).add(x)
    with pytest.raises(VectorIndexError, match="pre_reorder_num_neighbors=50 needs re-ordering.*reorder=None"):
        off.search(q, K, params={"pre_reorder_num_neighbors": 50})


def test_too_few_training_vectors_are_refused_and_leaves_are_capped(data):
    x, q = data
    with pytest.raises(VectorIndexError, match="training vectors: got 15.*at least 16"):
        scann().train(x[:15])
    small = scann(num_leaves=100).train(x[:40]).add(x)  # 100 leaves asked, 40 training vectors
    assert small.leaves == 40
    assert small.search(q, K, params={"leaves_to_search": 10**6})[1].shape == (len(q), K)  # capped at 40
    assert scann().train(x).leaves == 32


def test_recall_rises_with_leaves_to_search(data):
    x, q = data
    index = scann(num_leaves=64, reorder=100).train(x).add(x)
    truth = exact(x, q)[1]
    recalls = [recall(index.search(q, K, params={"leaves_to_search": n})[1], truth) for n in (1, 2, 4, 16, 64)]
    assert recalls == sorted(recalls) and recalls[0] < 0.8 and recalls[-1] >= 0.99, recalls
    info = {}
    index.search(q, K, params={"leaves_to_search": 1000}, stats=info.update)
    assert info == {"leaves_searched": 64.0}


def test_reordering_gives_exact_scores_and_its_absence_estimates(data):
    x, q = data
    D0, I0 = exact(x, q)
    on = scann(num_leaves_to_search=32, reorder=100).train(x).add(x)
    off = scann(num_leaves_to_search=32, reorder=None).train(x).add(x)
    assert off.reorder is None and off.params()["reorder"] is None and scann(reorder=0).reorder is None
    D, I = on.search(q, K)
    assert recall(I, I0) >= 0.97
    sq = ((x[I] - q[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(D, sq, rtol=1e-4, atol=1e-3)  # re-ordered: exact squared distances
    Doff, Ioff = off.search(q, K)
    assert recall(Ioff, I0) < recall(I, I0)  # 4-bit codes alone rank worse ...
    assert np.abs(Doff - ((x[Ioff] - q[:, None]) ** 2).sum(-1)).max() > 1e-2  # ... and score approximately
    more = [recall(on.search(q, K, params={"pre_reorder_num_neighbors": n})[1], I0) for n in (10, 30, 300)]
    assert more == sorted(more) and more[0] < more[-1], more
    _, short = on.search(q, K, params={"pre_reorder_num_neighbors": 5})  # fewer candidates than k: padding
    assert (short[:, 5:] == -1).all() and (short[:, :5] >= 0).all()


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_similarity_metrics_return_exact_similarities_after_reordering(data, metric):
    x, q = data
    D, I = scann(metric, num_leaves_to_search=32, reorder=100).train(x).add(x).search(q, K)
    D0, I0 = exact(x, q, metric)
    assert recall(I, I0) >= 0.97
    if metric == "cosine":
        x, q = x / np.linalg.norm(x, axis=1, keepdims=True), q / np.linalg.norm(q, axis=1, keepdims=True)
    np.testing.assert_allclose(D, np.einsum("qkd,qd->qk", x[I], q), rtol=1e-4, atol=1e-4)


def test_the_same_config_returns_the_ids_scann_returns_directly(data):
    """The wrapper adds ids, checks and copy-on-write, never different answers: same data, same
    config (as the wrapper builds it), same search knobs, same neighbours and scores."""
    from scann.scann_ops.py import scann_ops_pybind

    x, q = data
    ids = np.arange(len(x)) * 5 + 7
    index = scann(num_leaves=32, reorder=60).train(x).add(x, ids)
    config = index._config(32, len(x))  # training used every vector: 2,000 < training_sample_size
    direct = scann_ops_pybind.create_searcher(x, config, 1)
    direct.set_num_threads(1)
    for leaves, pre in ((1, 60), (4, 30), (16, 100)):
        rows, scores = direct.search_batched(q, K, pre, leaves)
        D, I = index.search(q, K, params={"leaves_to_search": leaves, "pre_reorder_num_neighbors": pre})
        np.testing.assert_array_equal(I, ids[rows.astype(np.int64)])
        np.testing.assert_allclose(D, scores, rtol=1e-5, atol=1e-5)


def test_same_data_and_seed_give_the_same_index(data):
    x, q = data
    a, b = (scann(num_leaves=32).train(x[:1500]).add(x) for _ in range(2))
    np.testing.assert_array_equal(a.search(q, K)[1], b.search(q, K)[1])
    sampled = [scann(training_sample_size=500, seed=s).train(x).add(x).search(q, K, params={"leaves_to_search": 1})[1] for s in (0, 0, 1)]
    np.testing.assert_array_equal(sampled[0], sampled[1])
    assert not np.array_equal(sampled[0], sampled[2]), "the seed picks the training sample"


def test_adds_go_into_the_trained_tree_and_removes_follow_scann_moves(data):
    """Incremental adds equal one big add; after removals, every returned id's score is the distance
    to that id's own vector (a wrong row map after ScaNN's swap-with-last delete would break this)."""
    x, q = data
    ids = np.random.default_rng(0).permutation(len(x)) + 100
    whole = scann(num_leaves_to_search=8).train(x).add(x, ids)
    parts = scann(num_leaves_to_search=8).train(x)
    for chunk in np.array_split(np.arange(len(x)), 5):
        parts.add(x[chunk], ids[chunk])
    D, I = whole.search(q, K)
    np.testing.assert_array_equal(parts.search(q, K)[1], I)
    np.testing.assert_allclose(parts.search(q, K)[0], D, rtol=1e-6)

    gone = np.unique(np.concatenate([ids[:300], ids[-5:], ids[1000:1010], I[:, :2].ravel()]))
    assert parts.remove(gone) == len(gone)
    stored = ~np.isin(ids, gone)
    np.testing.assert_array_equal(parts.ids, ids[stored])  # survivors keep their order
    vectors = x.copy()
    for back in (gone[::7], gone[1::7]):  # removed ids can come back, with new vectors
        D, I = parts.search(q, K, params={"leaves_to_search": 32})
        assert not np.isin(I, ids[~stored]).any() and (I >= 0).all()
        rows = np.searchsorted(np.sort(ids), I)  # ids are 100..2099: row = id - 100
        sq = ((vectors[np.argsort(ids)][rows] - q[:, None]) ** 2).sum(-1)
        np.testing.assert_allclose(D, sq, rtol=1e-4, atol=1e-3)
        truth = exact(vectors[stored], q, ids=ids[stored])[1]
        assert recall(I, truth) >= 0.97
        coming = np.isin(ids, back)
        vectors[coming] *= 1.01
        parts.add(vectors[coming], ids[coming])
        stored |= coming
    n = len(parts)
    assert parts.remove(parts.ids) == n and len(parts) == 0
    parts.add(x[:20], ids=np.arange(20))  # emptied, then filled again from the trained tree
    assert parts.search(x[:3], 1)[1][:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("reorder", [40, None])
def test_save_load_round_trip_gives_identical_results(data, tmp_path, reorder):
    x, q = data
    index = scann(reorder=reorder, anisotropic_quantization_threshold=0.2, dimensions_per_block=3).train(x).add(x[:1500])
    index.remove(index.ids[::7])
    for params in (None, {"leaves_to_search": 1}, {"leaves_to_search": 32}):
        loaded = load_index(index.save(tmp_path / f"i{reorder}.vsi"))
        assert loaded.params() == index.params() and loaded.leaves == index.leaves
        for a, b in zip(loaded.search(q, K, params=params), index.search(q, K, params=params)):
            np.testing.assert_array_equal(a, b)
    empty = load_index(scann(reorder=reorder).train(x).save(tmp_path / "empty.vsi"))  # trained, nothing added
    assert len(empty) == 0 and empty.is_trained
    assert empty.add(x).search(q, K)[1].shape == (len(q), K)
    untrained = load_index(scann(reorder=reorder).save(tmp_path / "untrained.vsi"))
    assert not untrained.is_trained


def _forge(index, tmp_path, change):
    from test_index_conformance import _rewrite

    path = index.save(tmp_path / "index.vsi")
    edited = _rewrite(path, tmp_path / "edited.vsi", change)
    with pytest.raises(VectorIndexError, match=str(edited)) as caught:
        load_index(edited)
    return str(caught.value)


def _npy(array):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def _loaded_file(arrays, name):
    import io

    return np.load(io.BytesIO(arrays[name].tobytes()))


@pytest.mark.parametrize("forgery, message", [
    ("asset path outside", "asset path '/etc/passwd' is not one of the saved files"),
    ("other config", "config is not the one the header's dim, metric and params build"),
    ("header params", "config is not the one"),
    ("rows not a permutation", "not a permutation"),
    ("tokens out of range", "leaf tokens are outside"),
    ("short dataset", "dataset.npy' is float32"),
    ("codes missing", "is not one of the saved files"),
    ("odd file name", "not a plain file name"),
    ("leaves", "saved leaves"),
])
def test_forged_scann_files_are_refused(data, tmp_path, forgery, message):
    x, _ = data
    index = scann().train(x).add(x[:300])

    def change(header, arrays):
        if forgery == "asset path outside":
            arrays["state.live.scann_assets.pbtxt"] = np.frombuffer(
                arrays["state.live.scann_assets.pbtxt"].tobytes().replace(b'"dataset.npy"', b'"/etc/passwd"'), np.uint8)
        elif forgery == "other config":
            other = scann(reorder=41).train(x).add(x[:300])
            arrays["state.live.scann_config.pb"] = other._arrays(other._state)["live.scann_config.pb"]
        elif forgery == "header params":
            header["params"]["dimensions_per_block"] = 4
        elif forgery == "rows not a permutation":
            rows = arrays["state.rows"].copy()
            rows[0] = rows[1]
            arrays["state.rows"] = rows
        elif forgery == "tokens out of range":
            tokens = _loaded_file(arrays, "state.live.datapoint_to_token.npy").copy()
            tokens[5] = 10**6
            arrays["state.live.datapoint_to_token.npy"] = _npy(tokens)
        elif forgery == "short dataset":
            arrays["state.live.dataset.npy"] = _npy(_loaded_file(arrays, "state.live.dataset.npy")[:-1])
        elif forgery == "codes missing":
            del arrays["state.live.hashed_dataset.npy"]
        elif forgery == "odd file name":
            arrays["state.live.../x.npy"] = arrays["state.live.scann_config.pb"]
        else:
            arrays["state.leaves"] = np.array([33])

    assert message in _forge(index, tmp_path, change) or pytest.fail(message)
