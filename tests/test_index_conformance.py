"""The common checks every index passes, like scikit-learn's ``check_estimator``.

Each entry of ``CONFIGS`` is one index kind with parameters that suit the small
clustered data below; every test runs on every entry. A new index kind joins
the suite by adding one line here.
"""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.index import REGISTRY, VectorIndexError, build_index, load_index

DIM = 16
N = 1000
K = 10

#: (test id, kind, params, minimum recall@10 against exact search on the data below)
CONFIGS = [
    ("exact", "exact", {}, 1.0),
    ("kdtree", "kdtree", {"leaf_size": 16}, 1.0),
    ("lsh", "lsh", {"n_tables": 8, "n_bits": 8, "n_probes": 8}, 0.9),
    ("ivf", "ivf", {"nlist": 16, "nprobe": 6}, 0.9),
    ("pq", "pq", {"m": 8, "nbits": 8}, 0.6),
    ("ivfpq", "ivfpq", {"nlist": 8, "nprobe": 4, "m": 8, "nbits": 6}, 0.5),
    ("faiss-flat", "faiss", {"factory": "Flat"}, 1.0),
    ("faiss-ivf", "faiss", {"factory": "IVF16,Flat", "search_params": {"nprobe": 6}}, 0.9),
    ("faiss-ivfpq", "faiss", {"factory": "IVF8,PQ8x6", "search_params": {"nprobe": 4}}, 0.5),
    ("faiss-hnsw", "faiss", {"factory": "HNSW16", "search_params": {"efSearch": 64}}, 0.9),
    ("faiss-lsh", "faiss", {"factory": "LSHrt"}, 0.2),
    ("annoy", "annoy", {"n_trees": 20}, 0.9),
    ("sklearn-kdtree", "sklearn-kdtree", {}, 1.0),
    ("sklearn-balltree", "sklearn-balltree", {}, 1.0),
]
IDS = [c[0] for c in CONFIGS]


def test_every_registered_kind_is_in_the_suite():
    assert {kind for _, kind, _, _ in CONFIGS} == set(REGISTRY)


@pytest.fixture(scope="module")
def data():
    """1,000 points in 20 Gaussian clusters (16-d) and 40 queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (20, DIM))
    x = (centres[rng.integers(20, size=N)] + rng.normal(0, 1, (N, DIM))).astype(np.float32)
    q = (x[rng.choice(N, 40, replace=False)] + rng.normal(0, 0.5, (40, DIM))).astype(np.float32)
    return x, q


def make(config, metric="l2"):
    _, kind, params, _ = config
    return build_index(kind, DIM, metric, **params)


def filled(config, x, ids=None, metric="l2"):
    index = make(config, metric)
    index.train(x)
    return index.add(x, ids)


def exact_ids(x, q, k=K, metric="l2"):
    return build_index("exact", DIM, metric).add(x).search(q, k)[1]


def recall(found, truth):
    return np.mean([len(set(a[a >= 0]) & set(b)) / len(b) for a, b in zip(found, truth)])


@pytest.fixture(params=CONFIGS, ids=IDS)
def config(request):
    return request.param


def test_search_returns_float32_and_int64_best_first(config, data):
    x, q = data
    D, I = filled(config, x).search(q, K)
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (len(q), K)
    assert (np.diff(D, axis=1) >= 0).all(), "l2 scores must ascend"
    assert ((I >= 0) & (I < N)).all()
    assert all(len(set(row)) == K for row in I), "an id appears twice in one result list"


def test_recall_against_exact(config, data):
    x, q = data
    minimum = config[3]
    assert recall(filled(config, x).search(q, K)[1], exact_ids(x, q)) >= minimum


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_other_metrics_rank_like_exact(config, data, metric):
    x, q = data
    if metric not in REGISTRY[config[1]].supported_metrics:
        with pytest.raises(VectorIndexError, match=f"does not support metric '{metric}'"):
            make(config, metric)
        return
    if config[0] == "faiss-lsh":  # Faiss's IndexLSH is L2-only, and the wrapper says so
        with pytest.raises(VectorIndexError, match="cannot build factory string 'LSHrt'.*METRIC_L2"):
            make(config, metric)
        return
    D, I = make(config, metric).train(x).add(x).search(q, K)
    assert (np.diff(D, axis=1) <= 0).all(), "similarities must descend"
    truth = exact_ids(x, q, metric=metric)
    assert recall(I, truth) >= config[3] - 0.1
    compressed = config[1] in ("pq", "ivfpq") or "PQ" in config[2].get("factory", "")
    if metric == "cosine" and not compressed:  # PQ scores use reconstructions, which may overshoot 1
        assert (D[I >= 0] <= 1 + 1e-4).all() and (D[I >= 0] >= -1 - 1e-4).all()
    if REGISTRY[config[1]].exact:
        expected = build_index("exact", DIM, metric).add(x).search(q, K)[0]
        np.testing.assert_allclose(D, expected, rtol=1e-4, atol=1e-4)


def test_exact_kinds_return_exact_scores(config, data):
    x, q = data
    if not REGISTRY[config[1]].exact and config[0] != "faiss-flat":
        pytest.skip("approximate index")
    D, I = filled(config, x).search(q, K)
    D0, I0 = build_index("exact", DIM).add(x).search(q, K)
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-3)
    sq = ((x[I] - q[:, None]) ** 2).sum(-1)
    np.testing.assert_allclose(D, sq, rtol=1e-4, atol=1e-3)


def test_ids_are_preserved(config, data):
    x, q = data
    ids = np.random.default_rng(1).permutation(N) * 7 + 1000
    I = filled(config, x, ids).search(q, K)[1]
    assert np.isin(I, ids).all()
    # The same neighbours as with default ids, renamed.
    I_default = filled(config, x).search(q, K)[1]
    assert recall(I, ids[I_default]) >= 0.99


def test_default_ids_continue_after_the_largest(config, data):
    x, _ = data
    index = filled(config, x[:500], ids=np.arange(500) + 10)
    index.add(x[500:])
    assert len(index) == N and index.ids[500] == 510


@pytest.mark.parametrize("bad_dim", [DIM - 1, DIM + 1])
def test_wrong_dimension(config, data, bad_dim):
    x, q = data
    index = filled(config, x)
    wrong = np.zeros((3, bad_dim), np.float32)
    with pytest.raises(VectorIndexError, match=f"dimension {bad_dim}.*dimension {DIM}"):
        index.add(wrong)
    with pytest.raises(VectorIndexError, match=f"dimension {bad_dim}"):
        index.search(wrong, K)
    with pytest.raises(VectorIndexError, match=r"2-D.*\[None, :\]"):
        index.search(q[0], K)
    assert len(index) == N


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.bool_, np.complex64, object])
def test_non_float_dtype_is_refused(config, data, dtype):
    x, _ = data
    index = filled(config, x)
    with pytest.raises(VectorIndexError, match="not a floating type"):
        index.add(np.ones((3, DIM), dtype=dtype))
    with pytest.raises(VectorIndexError, match="not a floating type"):
        index.search(np.ones((3, DIM), dtype=dtype), K)
    assert len(index) == N


def test_float64_and_float16_are_accepted(config, data):
    x, q = data
    index = filled(config, x)
    D32, I32 = index.search(q, K)
    D64, I64 = index.search(q.astype(np.float64), K)
    np.testing.assert_array_equal(I32, I64)
    np.testing.assert_array_equal(D32, D64)
    assert index.search(q.astype(np.float16), K)[1].shape == (len(q), K)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_and_nothing_is_added(config, data, bad):
    x, q = data
    index = filled(config, x)
    poisoned = x[:5].copy()
    poisoned[3, 2] = bad
    with pytest.raises(VectorIndexError, match="row 3 contains (NaN|inf)"):
        index.add(poisoned, ids=np.arange(5) + 10_000)
    assert len(index) == N
    with pytest.raises(VectorIndexError, match="row 3"):
        index.search(poisoned, K)
    if index.needs_training:
        with pytest.raises(VectorIndexError, match="row 3"):
            make(config).train(poisoned)


def test_empty_index(config, data):
    x, q = data
    index = make(config).train(x)
    assert len(index) == 0
    with pytest.raises(VectorIndexError, match="empty"):
        index.search(q, K)
    index.add(np.empty((0, DIM), np.float32))
    assert len(index) == 0


def test_untrained_index_refuses_add(config, data):
    x, _ = data
    index = make(config)
    if not index.needs_training:
        index.add(x[:10])  # no training needed: add straight away
        assert len(index) == 10
        return
    with pytest.raises(VectorIndexError, match="trained before add"):
        index.add(x)
    assert len(index) == 0


def test_k_zero_and_k_larger_than_the_index(config, data):
    x, q = data
    index = filled(config, x)
    D, I = index.search(q, 0)
    assert D.shape == I.shape == (len(q), 0)
    small = make(config).train(x).add(x[:7], ids=np.arange(7) + 50)
    D, I = small.search(q[:3], 12)
    assert D.shape == I.shape == (3, 12)
    assert (I[:, 7:] == -1).all() and np.isinf(D[:, 7:]).all() and (D[:, 7:] > 0).all()
    found = I[:, :7]
    assert np.isin(found[found >= 0], np.arange(7) + 50).all()
    for bad_k in (-1, 2.5, True, "3"):
        with pytest.raises(VectorIndexError, match="k must be a non-negative integer"):
            index.search(q, bad_k)


def test_padding_uses_the_worst_similarity(config, data):
    x, q = data
    if "cosine" not in REGISTRY[config[1]].supported_metrics or config[0] == "faiss-lsh":
        pytest.skip("no similarity metric")
    small = make(config, "cosine").train(x).add(x[:5])
    D, I = small.search(q[:2], 8)
    assert (I[:, 5:] == -1).all() and (D[:, 5:] == -np.inf).all()


def test_duplicate_ids_are_refused_and_nothing_is_added(config, data):
    x, _ = data
    index = filled(config, x)
    with pytest.raises(VectorIndexError, match="already in the index"):
        index.add(x[:3], ids=[N + 1, 5, N + 2])
    fresh = make(config).train(x)
    with pytest.raises(VectorIndexError, match="more than once"):
        fresh.add(x[:3], ids=[4, 9, 4])
    with pytest.raises(VectorIndexError, match="non-negative"):
        fresh.add(x[:2], ids=[-1, 3])
    with pytest.raises(VectorIndexError, match="shape"):
        fresh.add(x[:2], ids=[1, 2, 3])
    assert len(index) == N and len(fresh) == 0


def test_non_contiguous_input_gives_the_same_results(config, data):
    x, q = data
    wide = np.zeros((N, DIM * 2), np.float32)
    wide[:, ::2] = x
    fortran = np.asfortranarray(q)
    assert not wide[:, ::2].flags.c_contiguous and not fortran.flags.c_contiguous
    D, I = filled(config, wide[:, ::2]).search(fortran, K)
    D0, I0 = filled(config, x).search(q, K)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-6)


def test_save_load_round_trip(config, data, tmp_path):
    x, q = data
    index = filled(config, x, ids=np.arange(N) * 3)
    D, I = index.search(q, K)
    path = index.save(tmp_path / "deep" / "index.vsi")
    loaded = load_index(path)
    assert type(loaded) is type(index) and len(loaded) == N and loaded.params() == index.params()
    assert loaded.metric == "l2" and loaded.dim == DIM
    D2, I2 = loaded.search(q, K)
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    loaded.add(x[:2] + 0.5, ids=[10**9, 10**9 + 1])  # a loaded index keeps working
    assert len(loaded) == N + 2
    assert not list(tmp_path.glob("deep/.*.tmp")), "the temporary file was left behind"


def test_truncated_foreign_and_altered_files_raise(config, data, tmp_path):
    x, _ = data
    path = filled(config, x).save(tmp_path / "index.vsi")
    blob = path.read_bytes()
    for cut in (3, 20, len(blob) // 2, len(blob) - 1):
        (tmp_path / "cut.vsi").write_bytes(blob[:cut])
        with pytest.raises(VectorIndexError, match="truncated|not a visual_search index"):
            load_index(tmp_path / "cut.vsi")
    (tmp_path / "foreign.npz").write_bytes(b"PK\x03\x04" + blob[8:])
    with pytest.raises(VectorIndexError, match="not a visual_search index file"):
        load_index(tmp_path / "foreign.npz")
    altered = bytearray(blob)
    altered[-10] ^= 0xFF
    (tmp_path / "altered.vsi").write_bytes(bytes(altered))
    with pytest.raises(VectorIndexError, match="checksum"):
        load_index(tmp_path / "altered.vsi")
    with pytest.raises(VectorIndexError, match="no such index file"):
        load_index(tmp_path / "missing.vsi")


def test_remove(config, data):
    x, q = data
    index = filled(config, x)
    _, before = index.search(q, K)
    gone = np.unique(before[:, :3])
    if config[0] == "faiss-hnsw":
        with pytest.raises(VectorIndexError, match="cannot remove"):
            index.remove(gone)
        assert len(index) == N
        return
    assert index.remove(np.concatenate([gone, [10**9]])) == len(gone)
    assert len(index) == N - len(gone) and not np.isin(index.ids, gone).any()
    D, I = index.search(q, K)
    assert not np.isin(I, gone).any()
    keep = ~np.isin(np.arange(N), gone)
    truth = build_index("exact", DIM).add(x[keep], ids=np.flatnonzero(keep)).search(q, K)[1]
    assert recall(I, truth) >= config[3] - 0.1
    assert index.remove([]) == 0
    index.add(x[gone], ids=gone)  # removed ids can be added again
    assert len(index) == N
    with pytest.raises(VectorIndexError, match="1-D integer"):
        index.remove(np.array([1.5]))


def test_memory_grows_with_the_data(config, data):
    x, _ = data
    small, big = filled(config, x[:300]).memory_bytes(), filled(config, x).memory_bytes()
    assert 0 < small < big


def test_repr_names_kind_and_size(config, data):
    x, _ = data
    text = repr(filled(config, x))
    assert "dim=16" in text and "n=1000" in text


def test_retraining_a_filled_index_is_refused(config, data):
    x, q = data
    index = filled(config, x)
    if not index.needs_training:
        index.train(x)  # nothing to learn: a no-op, whatever the index holds
        return
    D, I = index.search(q, K)
    with pytest.raises(VectorIndexError, match="already holds 1000 vectors"):
        index.train(x[::-1] * 2)
    np.testing.assert_array_equal(index.search(q, K)[1], I)  # nothing changed


def test_an_altered_header_is_caught(config, data, tmp_path):
    x, _ = data
    path = filled(config, x).save(tmp_path / "index.vsi")
    blob = path.read_bytes()
    assert b'"metric": "l2"' in blob
    (tmp_path / "edited.vsi").write_bytes(blob.replace(b'"metric": "l2"', b'"metric": "ip"'))
    with pytest.raises(VectorIndexError, match="checksum"):
        load_index(tmp_path / "edited.vsi")
