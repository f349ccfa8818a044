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

#: (test id, kind, params, minimum recall@10 against exact search on the data below,
#:  (low, high) bytes per stored vector at dim=16, l2: what each class's docstring documents)
CONFIGS = [
    ("exact", "exact", {}, 1.0, (76, 76)),  # 4 (dim + 1) + 8
    ("kdtree", "kdtree", {"leaf_size": 16}, 1.0, (80, 120)),  # 4 dim + 8 + 8 per leaf slot, plus node boxes
    ("lsh", "lsh", {"n_tables": 8, "n_bits": 8, "n_probes": 8}, 0.9, (212, 212)),  # 4 (dim + 1) + 16 tables + 8 sketch + 8
    ("ivf", "ivf", {"nlist": 16, "nprobe": 6}, 0.9, (84, 84)),  # 4 (dim + 1) + 8 row + 8 id
    ("pq", "pq", {"m": 8, "nbits": 8}, 0.6, (16, 16)),  # m + 8
    ("ivfpq", "ivfpq", {"nlist": 8, "nprobe": 4, "m": 8, "nbits": 6}, 0.5, (28, 28)),  # m + 4 term + 8 row + 8 id
    ("faiss-flat", "faiss", {"factory": "Flat"}, 1.0, (72, 72)),  # 4 dim + 8 (Faiss's id map)
    ("faiss-ivf", "faiss", {"factory": "IVF16,Flat", "search_params": {"nprobe": 6}}, 0.9, (72, 72)),
    # "np": no polysemous training, which is slow and not what these checks are about
    ("faiss-ivfpq", "faiss", {"factory": "IVF8,PQ8x6np", "search_params": {"nprobe": 4}}, 0.5, (14, 14)),  # 8 x 6 bits + 8
    ("faiss-hnsw", "faiss", {"factory": "HNSW16", "search_params": {"efSearch": 64}}, 0.9, (200, 260)),  # + 2M links of 4 bytes
    ("faiss-lsh", "faiss", {"factory": "LSHrt"}, 0.2, (10, 10)),  # dim bits + 8
    ("annoy", "annoy", {"n_trees": 20}, 0.9, (136, 600)),  # the kept vectors, plus Annoy's items and tree nodes
    # ScaNN's files: float32 vectors for re-ordering 4 dim, a code byte per 2-d block dim / 2, a leaf token 4; row map 8, id 8
    ("scann", "scann", {"num_leaves": 16, "num_leaves_to_search": 6, "reorder": 50}, 0.9, (92, 92)),
    ("sklearn-kdtree", "sklearn-kdtree", {}, 1.0, (144, 260)),  # the kept vectors, scikit-learn's copy and index
    ("sklearn-balltree", "sklearn-balltree", {}, 1.0, (144, 260)),
]
IDS = [c[0] for c in CONFIGS]


def test_every_registered_kind_is_in_the_suite():
    assert {c[1] for c in CONFIGS} == set(REGISTRY)


@pytest.fixture(scope="module")
def data():
    """1,000 points in 20 Gaussian clusters (16-d) and 40 queries near them."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 4, (20, DIM))
    x = (centres[rng.integers(20, size=N)] + rng.normal(0, 1, (N, DIM))).astype(np.float32)
    q = (x[rng.choice(N, 40, replace=False)] + rng.normal(0, 0.5, (40, DIM))).astype(np.float32)
    return x, q


def make(config, metric="l2", **extra):
    kind, params = config[1], config[2]
    return build_index(kind, DIM, metric, **{**params, **extra})


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
    assert D.shape == I.shape == (3, 7), "k is capped at the index size"
    assert np.isin(I[I >= 0], np.arange(7) + 50).all()
    assert (np.isinf(D) == (I < 0)).all(), "only padding has an infinite score"
    D, I = small.search(q[:3], 10**18)  # a huge k costs nothing
    assert D.shape == I.shape == (3, 7)
    for bad_k in (-1, 2.5, True, "3"):
        with pytest.raises(VectorIndexError, match="k must be a non-negative integer"):
            index.search(q, bad_k)


def test_padding_uses_the_worst_similarity(config, data):
    x, q = data
    if "cosine" not in REGISTRY[config[1]].supported_metrics or config[0] == "faiss-lsh":
        pytest.skip("no similarity metric")
    D, I = make(config, "cosine").train(x).add(x[:5]).search(q[:2], 8)
    assert D.shape == (2, 5)
    assert (np.isneginf(D) == (I < 0)).all(), "padding, and only padding, has the worst similarity"


@pytest.mark.parametrize("metric, worst", [("l2", np.inf), ("cosine", -np.inf)])
def test_an_approximate_index_pads_with_minus_one_and_the_worst_score(metric, worst):
    """IVF probing one list of two vectors cannot find 5 results: the rest is padding."""
    x = np.array([[1, 0], [1.1, 0.1], [-1, 0], [-1.1, -0.1], [0, 1], [0.1, 1.1]], np.float32)
    index = build_index("ivf", 2, metric, nlist=3, nprobe=1).train(x).add(x)
    D, I = index.search(x[:1], 5)
    assert I.shape == (1, 5) and (I[0, :2] >= 0).all() and (I[0, 2:] == -1).all()
    assert (D[0, 2:] == worst).all() and np.isfinite(D[0, :2]).all()


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


def test_memory_grows_by_the_documented_bytes_per_vector(config, data):
    x, _ = data
    small, big = filled(config, x[:300]).memory_bytes(), filled(config, x).memory_bytes()
    low, high = config[4]
    assert 0 < small < big
    assert low <= (big - small) / (N - 300) <= high


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


# ---- One query at a time, atomic writes, concurrency --------------------------------------


def test_a_batch_search_equals_one_query_at_a_time(config, data):
    """scikit-learn's subset invariance: a query's answer must not depend on its batch."""
    x, q = data
    index = filled(config, x)
    D, I = index.search(q, K)
    for i in range(len(q)):
        d, ids = index.search(q[i : i + 1], K)
        np.testing.assert_array_equal(ids[0], I[i])
        np.testing.assert_allclose(d[0], D[i], rtol=1e-4, atol=1e-3)  # GEMM and GEMV round differently


def _snapshot(index, q):
    D, I = index.search(q, K)
    return len(index), index.ids.copy(), index.memory_bytes(), D, I


@pytest.mark.parametrize("operation", ["add", "remove"])
def test_a_failed_write_leaves_the_index_exactly_as_it_was(config, data, monkeypatch, operation):
    """Inject a failure after all of a write's work is done, just before it would commit."""
    x, q = data
    index = filled(config, x[:600])
    if operation == "remove" and config[0] == "faiss-hnsw":
        pytest.skip("HNSW cannot remove")
    before = _snapshot(index, q)
    cls = type(index)
    original = getattr(cls, f"_{operation}")

    def failing(self, *args, **kwargs):
        original(self, *args, **kwargs)  # all the work ...
        raise RuntimeError("injected failure")  # ... then a failure before the commit

    monkeypatch.setattr(cls, f"_{operation}", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        index.add(x[600:]) if operation == "add" else index.remove(index.ids[:50])
    monkeypatch.setattr(cls, f"_{operation}", original)
    after = _snapshot(index, q)
    assert after[0] == before[0] and after[2] == before[2]
    for a, b in zip(after[1:], before[1:]):
        np.testing.assert_array_equal(a, b)
    index.add(x[600:])  # and it still works
    assert len(index) == N


def test_eight_threads_search_while_another_adds_and_removes(config, data):
    """Every concurrent result equals the serial result of a state the index was in during that search."""
    import threading
    import time

    x, q = data
    removable = config[0] != "faiss-hnsw"
    ops = [("add", slice(400, 550)), ("remove", slice(0, 100)), ("add", slice(550, 700)), ("remove", slice(150, 250)), ("add", slice(700, 850))]
    if not removable:
        ops = [op for op in ops if op[0] == "add"]
    ids = np.arange(N)

    def apply(index, op):
        kind, part = op
        if kind == "add":
            index.add(x[part], ids=ids[part])
        else:
            index.remove(ids[part])

    # The serial run: the results of every state the index passes through.
    serial = filled(config, x[:400], ids=ids[:400])
    expected = [serial.search(q, K)]
    for op in ops:
        apply(serial, op)
        expected.append(serial.search(q, K))

    index = filled(config, x[:400], ids=ids[:400])
    version, done, failures, checked = [0], threading.Event(), [], [0]
    start = threading.Barrier(9)

    def reader():
        start.wait()
        for _ in range(200):  # bounded in count ...
            v0 = version[0]
            D, I = index.search(q, K)
            v1 = version[0]
            if not any(np.array_equal(I, expected[v][1]) and np.allclose(D, expected[v][0], rtol=1e-5, atol=1e-5) for v in range(v0, v1 + 1)):
                failures.append((v0, v1))
            checked[0] += 1
            if done.is_set():  # ... and in time: stop soon after the writer
                break

    def writer():
        start.wait()
        for op in ops:
            time.sleep(0.01)  # let the readers see every state
            apply(index, op)
            version[0] += 1
        done.set()

    threads = [threading.Thread(target=reader) for _ in range(8)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    assert not failures, f"{len(failures)} of {checked[0]} concurrent searches matched no serial state, e.g. versions {failures[0]}"
    assert version[0] == len(ops) and checked[0] >= 8


# ---- Search parameters with the call, statistics to a callback -----------------------------


def test_search_params_apply_to_one_call_only(config, data):
    x, q = data
    index = filled(config, x)
    names = type(index).search_params if config[1] != "faiss" else index.search_params
    if not names:
        with pytest.raises(VectorIndexError, match="unknown search parameter"):
            index.search(q, K, params={"nprobe": 2})
        return
    stored = {name: getattr(index, name) for name in names}
    default = index.search(q, K)
    name = names[0]
    value = {"nprobe": 1, "efSearch": 10, "n_probes": 0, "search_k": 25, "leaves_to_search": 1}[name]
    D, I = index.search(q, K, params={name: value})
    assert {n: getattr(index, n) for n in names} == stored, "a per-call parameter changed the stored default"
    np.testing.assert_array_equal(index.search(q, K)[1], default[1])
    built_as = {"leaves_to_search": "num_leaves_to_search"}.get(name, name)  # ScaNN's builder names its default so
    reference = make(config, **({"search_params": {**config[2].get("search_params", {}), name: value}} if config[1] == "faiss" else {built_as: value}))
    reference.train(x).add(x)
    np.testing.assert_array_equal(I, reference.search(q, K)[1])
    with pytest.raises(VectorIndexError, match="unknown search parameter.*bogus"):
        index.search(q, K, params={"bogus": 1})
    with pytest.raises(VectorIndexError, match=name):
        index.search(q, K, params={name: -7})
    with pytest.raises(VectorIndexError, match="params must be a dict"):
        index.search(q, K, params=[(name, value)])


def test_statistics_go_to_the_callback_not_the_index(config, data):
    x, q = data
    index = filled(config, x)
    calls = []
    attributes = set(vars(index))
    index.search(q, K, stats=calls.append)
    assert len(calls) == 1 and isinstance(calls[0], dict)
    assert set(vars(index)) == attributes, "search stored something on the index"
    expected = {"kdtree": {"leaves_visited", "leaves"}, "lsh": {"candidates_per_query", "reranked_per_query"}}.get(config[1], set())
    assert expected <= set(calls[0])


# ---- Hostile values -----------------------------------------------------------------------


def test_ids_up_to_the_int64_maximum_work_and_defaults_never_overflow(config, data):
    x, q = data
    top = np.iinfo(np.int64).max
    index = make(config).train(x).add(x[:20], ids=np.arange(top - 19, top + 1, dtype=np.int64))
    assert index.ids.max() == top and (index.search(x[:3], 1)[1][:, 0] >= top - 19).all()
    with pytest.raises(VectorIndexError, match="int64 maximum.*pass ids explicitly"):
        index.add(x[20:22])
    with pytest.raises(VectorIndexError, match="outside 0..9223372036854775807"):
        index.add(x[20:22], ids=np.array([top + 1, top + 2], dtype=np.uint64))
    with pytest.raises(VectorIndexError, match="outside 0..9223372036854775807"):
        index.add(x[20:22], ids=[2**64, 5])
    assert len(index) == 20
    index.add(x[20:22], ids=[0, 1])
    assert len(index) == 22


def test_absurdly_large_vectors_are_refused(config, data):
    x, q = data
    index = filled(config, x)
    huge = x[:4] * 1e20
    with pytest.raises(VectorIndexError, match="row 0 has a value of magnitude"):
        index.add(huge)
    with pytest.raises(VectorIndexError, match="magnitude"):
        index.search(huge, K)
    assert len(index) == N


def test_queries_from_another_model_are_refused(config, data, tmp_path):
    x, q = data
    index = make(config, model_version="simclr-cnn-aaaa").train(x).add(x, model_version="simclr-cnn-aaaa")
    with pytest.raises(VectorIndexError, match="model 'other-bbbb'.*model 'simclr-cnn-aaaa'"):
        index.search(q, K, model_version="other-bbbb")
    with pytest.raises(VectorIndexError, match="other-bbbb"):
        index.add(x[:2] + 1, model_version="other-bbbb")
    index.search(q, K, model_version="simclr-cnn-aaaa")
    index.search(q, K)  # not saying which model is allowed
    loaded = load_index(index.save(tmp_path / "index.vsi"))
    assert loaded.model_version == "simclr-cnn-aaaa"
    with pytest.raises(VectorIndexError, match="other-bbbb"):
        loaded.search(q, K, model_version="other-bbbb")


# ---- Files that cannot lie ----------------------------------------------------------------


def _rewrite(path, out, edit, version=None):
    """Read an index file, let ``edit(header, arrays)`` change it, write it back with a valid checksum."""
    import io

    from visual_search.container import read_container, write_container
    from visual_search.index import io as index_io

    _, header, payload = read_container(path, index_io.MAGIC, (1, 99), VectorIndexError, "index file")
    with np.load(io.BytesIO(payload)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    edit(header, arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    header.pop("payload_bytes")
    write_container(out, index_io.MAGIC, version or index_io.FORMAT_VERSION, header, buffer.getvalue())
    return out


def _bad_param(config):
    """A header edit that puts a parameter out of range (or breaks dim when the kind has none)."""
    params = config[2]
    if config[1] == "faiss":
        return lambda h: h["params"].__setitem__("factory", "IDMap,Flat")
    if params:
        name = next(iter(params))
        return lambda h: h["params"].__setitem__(name, -5)
    return lambda h: h.__setitem__("dim", DIM + 1)


@pytest.mark.parametrize("edit", ["duplicate ids", "negative id", "missing array", "wrong length", "bad parameter", "wrong dim"])
def test_an_edited_file_with_a_recomputed_checksum_is_still_refused(config, data, tmp_path, edit):
    x, _ = data
    path = filled(config, x).save(tmp_path / "index.vsi")

    def change(header, arrays):
        state = sorted(k for k in arrays if k.startswith("state."))
        if edit == "duplicate ids":
            arrays["ids"] = arrays["ids"].copy()
            arrays["ids"][1] = arrays["ids"][0]
        elif edit == "negative id":
            arrays["ids"] = arrays["ids"].copy()
            arrays["ids"][3] = -4
        elif edit == "missing array":
            del arrays[state[-1]]
        elif edit == "wrong length":
            arrays["ids"] = arrays["ids"][:-1]
        elif edit == "bad parameter":
            _bad_param(config)(header)
        else:
            header["dim"] = DIM * 2

    edited = _rewrite(path, tmp_path / "edited.vsi", change)
    with pytest.raises(VectorIndexError, match=str(edited)):
        load_index(edited)
    assert isinstance(load_index(path), type(make(config)))  # the original still loads


def test_a_file_from_a_newer_format_version_is_refused(config, data, tmp_path):
    x, _ = data
    from visual_search.index import io as index_io

    path = filled(config, x).save(tmp_path / "index.vsi")
    newer = _rewrite(path, tmp_path / "newer.vsi", lambda h, a: None, version=index_io.FORMAT_VERSION + 1)
    with pytest.raises(VectorIndexError, match=f"format version {index_io.FORMAT_VERSION + 1}"):
        load_index(newer)
    blob = bytearray(path.read_bytes())
    blob[8] += 1  # the version number itself is covered by the checksum
    (tmp_path / "bumped.vsi").write_bytes(bytes(blob))
    with pytest.raises(VectorIndexError, match="checksum"):
        load_index(tmp_path / "bumped.vsi")


# ---- Every parameter checked where it is given ---------------------------------------------

BAD_PARAMETERS = [
    ("exact", {}, "dim", "dim must be an integer"),
    ("kdtree", {"leaf_size": 0}, None, "kdtree: leaf_size"),
    ("kdtree", {"leaf_size": True}, None, "kdtree: leaf_size"),
    ("lsh", {"n_tables": 0}, None, "lsh: n_tables"),
    ("lsh", {"n_bits": 63}, None, "lsh: n_bits"),
    ("lsh", {"n_probes": -1}, None, "lsh: n_probes"),
    ("lsh", {"rerank": 2.5}, None, "lsh: rerank"),
    ("lsh", {"seed": -1}, None, "lsh: seed"),
    ("ivf", {"nlist": 0}, None, "ivf: nlist"),
    ("ivf", {"nprobe": 0}, None, "ivf: nprobe"),
    ("ivf", {"n_iter": 0}, None, "ivf: n_iter"),
    ("ivf", {"seed": 2**40}, None, "ivf: seed"),
    ("ivf", {"max_train_points": 0}, None, "ivf: max_train_points"),
    ("pq", {"m": 3}, None, "not divisible by m=3"),
    ("pq", {"nbits": 9}, None, "pq: nbits"),
    ("pq", {"seed": "0"}, None, "pq: seed"),
    ("ivfpq", {"nprobe": -2}, None, "ivfpq: nprobe"),
    ("faiss", {"factory": ""}, None, "factory must be a non-empty"),
    ("faiss", {"factory": 5}, None, "factory must be a non-empty"),
    ("faiss", {"factory": "IDMap,Flat"}, None, "leave out 'IDMap'"),
    ("faiss", {"factory": "Nonsense42"}, None, "cannot build factory string 'Nonsense42'"),
    ("faiss", {"factory": "IVF4,Flat", "search_params": {"nprobe": 0}}, None, "search parameter nprobe"),
    ("faiss", {"factory": "HNSW8", "search_params": {"efSearch": 0}}, None, "search parameter efSearch"),
    ("faiss", {"factory": "HNSW8", "search_params": {"nprobe": 4}}, None, r"unknown search parameter\(s\) \['nprobe'\].*efSearch"),
    ("faiss", {"factory": "Flat", "search_params": "fast"}, None, "search_params must be a dict"),
    ("annoy", {"n_trees": 0}, None, "annoy: n_trees"),
    ("annoy", {"search_k": 0}, None, "annoy: search_k"),
    ("annoy", {"search_k": -5}, None, "annoy: search_k"),
    ("annoy", {"seed": -1}, None, "annoy: seed"),
    ("sklearn-kdtree", {"leaf_size": 0}, None, "sklearn-kdtree: leaf_size"),
    ("sklearn-balltree", {"leaf_size": -3}, None, "sklearn-balltree: leaf_size"),
]


@pytest.mark.parametrize("kind, params, bad_dim, message", BAD_PARAMETERS, ids=lambda v: str(v) if not isinstance(v, dict) else "-".join(map(str, v.items())))
def test_every_parameter_is_checked_at_construction(kind, params, bad_dim, message):
    dim = 0 if bad_dim else DIM
    with pytest.raises(VectorIndexError, match=message):
        build_index(kind, dim, **params)


def test_a_stored_default_set_to_a_bad_value_is_refused_at_search(data):
    x, q = data
    index = build_index("ivf", DIM, nlist=8).train(x).add(x)
    index.nprobe = 0
    with pytest.raises(VectorIndexError, match="ivf: nprobe"):
        index.search(q, K)
    index.nprobe = 4
    assert index.search(q, K)[1].shape == (len(q), K)


def test_library_errors_come_out_as_our_error_naming_the_parameter(data):
    x, q = data
    index = build_index("faiss", DIM, factory="IVF64,Flat")
    with pytest.raises(VectorIndexError, match="faiss 'IVF64,Flat': training failed.*Number of training points"):
        index.train(x[:10])
    assert not index.is_trained and len(index) == 0
    index.train(x)  # and it still trains on enough points
    assert index.is_trained


# ---- Found in review: each of these failed before its fix ---------------------------------


def test_a_search_that_overlaps_a_retraining_reads_one_consistent_state(config, data):
    """Trained data (codebooks, centroids, a mean) live in the state a search holds, like the codes."""
    x, q = data
    index = filled(config, x)
    if not index.needs_training or config[0] == "faiss-hnsw":
        pytest.skip("nothing to re-train" if not index.needs_training else "HNSW cannot remove")
    snapshot = index._state  # what a search that started now would hold
    expected = index.search(q, K)
    index.remove(index.ids)  # an emptied index may be trained again ...
    index.train(x[::-1] * 3 + 7)
    index.add(x * 3 + 7)  # ... and refilled, while the old search is still running
    settings = index._settings(None)
    keys, ids = index._search(snapshot, index._prepare(q, "queries"), K, settings, {})
    np.testing.assert_array_equal(ids, expected[1])


@pytest.mark.parametrize("factory", ["HNSW0", "HNSW1", "NSG1", "IVF4_HNSW1,Flat"])
def test_faiss_graphs_too_small_to_build_are_refused_before_they_crash(factory):
    with pytest.raises(VectorIndexError, match="needs at least 2 neighbours"):
        build_index("faiss", 8, factory=factory)


def test_annoy_seeds_are_what_annoy_accepts():
    with pytest.raises(VectorIndexError, match=r"annoy: seed must be an integer in \[0, 2147483647\]"):
        build_index("annoy", 8, seed=2**31)
    build_index("annoy", 8, seed=2**31 - 1).add(np.eye(8, dtype=np.float32))


def test_ids_that_cannot_be_stored_are_ignored_by_remove(data):
    x, _ = data
    index = build_index("exact", DIM).add(x[:10])
    assert index.remove([-1, 2**64, 2**63]) == 0 and index.remove(np.array([2**63], np.uint64)) == 0
    assert index.remove([3, -1]) == 1 and len(index) == 9


def test_the_first_vectors_name_the_model_of_an_empty_index(data):
    x, q = data
    index = build_index("exact", DIM).add(x[:10], model_version="model-a")
    assert index.model_version == "model-a"
    with pytest.raises(VectorIndexError, match="model-b"):
        index.add(x[10:20], model_version="model-b")


def test_stats_must_be_callable(data):
    x, q = data
    with pytest.raises(VectorIndexError, match="stats must be a callable"):
        build_index("exact", DIM).add(x).search(q, K, stats={})


def test_exact_search_breaks_ties_by_the_lower_id_on_short_rows():
    from visual_search.index import exact_search

    base = np.zeros((1000, 2), np.float32)
    base[:, 0] = np.arange(1000) % 3
    _, I = exact_search(np.zeros((1, 2), np.float32), base, 20, "l2")
    assert I[0].tolist() == list(range(0, 60, 3))


def test_ivf_with_a_huge_k_allocates_about_the_output_not_nprobe_times_more():
    import tracemalloc

    rng = np.random.default_rng(0)
    x, q = rng.normal(size=(2000, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)
    index = build_index("ivf", 8, nlist=64, nprobe=64).train(x).add(x)
    tracemalloc.start()
    D, I = index.search(q, 10**9)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert I.shape == (50, 2000) and (np.sort(I, axis=1) == np.arange(2000)).all()
    assert peak < 40 * 50 * 2000 * 12, f"peak {peak / 1e6:.0f} MB"  # nprobe x the output would be 64 x


def _edit_and_load(index, tmp_path, change):
    path = index.save(tmp_path / "index.vsi")
    edited = _rewrite(path, tmp_path / "edited.vsi", change)
    with pytest.raises(VectorIndexError, match=str(edited)):
        load_index(edited)


def test_header_params_that_collide_with_build_index_are_refused(data, tmp_path):
    x, _ = data
    _edit_and_load(build_index("ivf", DIM, nlist=4).train(x).add(x), tmp_path, lambda h, a: h["params"].__setitem__("dim", 3))


def test_an_array_whose_header_claims_more_than_it_holds_is_refused(tmp_path):
    import io
    import zipfile

    from visual_search.container import read_container, write_container
    from visual_search.index import io as index_io

    path = build_index("exact", 4).add(np.eye(4, dtype=np.float32)).save(tmp_path / "index.vsi")
    _, header, payload = read_container(path, index_io.MAGIC, (1, 99), VectorIndexError, "index file")
    forged = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(payload)) as src, zipfile.ZipFile(forged, "w") as dst:
        for info in src.infolist():
            blob = src.read(info)
            if info.filename == "ids.npy":
                blob = blob.replace(b"(4,)", b"(2**40,)".replace(b"2**40", str(2**40).encode()))
            dst.writestr(info.filename, blob)
    header.pop("payload_bytes")
    write_container(tmp_path / "forged.vsi", index_io.MAGIC, index_io.FORMAT_VERSION, header, forged.getvalue())
    with pytest.raises(VectorIndexError, match="claims shape"):
        load_index(tmp_path / "forged.vsi")


def test_a_faiss_file_whose_ids_disagree_with_faiss_is_refused(data, tmp_path):
    x, _ = data
    for factory in ("Flat", "IVF4,Flat"):
        index = build_index("faiss", DIM, factory=factory).train(x).add(x[:60])
        _edit_and_load(index, tmp_path, lambda h, a: a.__setitem__("ids", a["ids"] + 1000))


def test_an_lsh_table_that_is_not_a_permutation_is_refused(data, tmp_path):
    x, _ = data
    index = build_index("lsh", DIM, n_tables=2, n_bits=4).train(x).add(x[:60])

    def change(header, arrays):
        rows = arrays["state.sorted_rows"].copy()
        rows[0] = 0
        arrays["state.sorted_rows"] = rows

    _edit_and_load(index, tmp_path, change)


@pytest.mark.parametrize("kind, name", [("exact", "state.matrix_t"), ("ivf", "state.matrix"), ("lsh", "state.matrix")])
def test_stored_norms_that_disagree_with_their_vectors_are_refused(data, tmp_path, kind, name):
    x, _ = data
    index = build_index(kind, DIM, **({"nlist": 4} if kind == "ivf" else {})).train(x).add(x[:60])

    def change(header, arrays):
        matrix = arrays[name].copy()
        if kind == "exact":
            matrix[-1, 1] = -3e30
        else:
            matrix[1, -1] = -3e30
        arrays[name] = matrix

    _edit_and_load(index, tmp_path, change)


def test_ivfpq_terms_that_disagree_with_the_codes_are_refused(data, tmp_path):
    x, _ = data
    index = build_index("ivfpq", DIM, nlist=4, m=4, nbits=4).train(x).add(x)

    def change(header, arrays):
        arrays["state.terms"] = arrays["state.terms"] + 5

    _edit_and_load(index, tmp_path, change)


def test_lsh_hyperplanes_that_would_need_gigabytes_are_refused():
    with pytest.raises(VectorIndexError, match="hyperplane coordinates"):
        build_index("lsh", 2**20, n_tables=1024, n_bits=62)


def test_near_duplicate_index_refuses_bad_keys_and_single_images():
    from visual_search.index.minhash import NearDuplicateIndex

    images = np.zeros((3, 28, 28), np.uint8)
    index = NearDuplicateIndex()
    with pytest.raises(VectorIndexError, match="keys: expected a sequence of hashable keys"):
        index.add([[1], [2], [3]], images)
    with pytest.raises(VectorIndexError, match="keys"):
        index.add(5, images)
    with pytest.raises(VectorIndexError, match=r"one image\? use images\[None\]"):
        index.query(images[0])
