"""Sharded search: the partition, the exact merge against one unsharded index, deadlines, and shard actors that survive a kill."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
import warnings

import faiss
import numpy as np
import pytest

from visual_search.errors import ScaleError, VectorIndexError
from visual_search.index import build_index
from visual_search.scale import ray_runtime, sharded
from visual_search.scale.sharded import ShardedIndex, measure_shard_latency, shard_of

DIM = 32
N = 2000
K = 10
EXACT_KINDS = {"exact": {}, "faiss-flat": {"factory": "Flat"}}
IVF_KINDS = {"ivf": {"nlist": 32, "nprobe": 4}, "faiss-ivf": {"factory": "IVF32,Flat", "search_params": {"nprobe": 4}}}


def _kind(name: str) -> tuple[str, dict]:
    params = {**EXACT_KINDS, **IVF_KINDS}[name]
    return ("faiss" if name.startswith("faiss") else name), params


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return rng.standard_normal((N, DIM)).astype(np.float32), rng.standard_normal((100, DIM)).astype(np.float32)


def _unsharded(kind: str, params: dict, x: np.ndarray, metric: str = "l2"):
    index = build_index(kind, DIM, metric, **params)
    index.train(x)
    index.add(x)
    return index


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


# ----------------------------------------------------------------------------------------- shard_of
def _splitmix64(value: int) -> int:
    """The reference: splitmix64's finaliser in plain Python integers."""
    mask = 2**64 - 1
    z = (value + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@pytest.mark.parametrize("n_shards", [1, 3, 8, 1024])
def test_shard_of_is_splitmix64_mod_s(n_shards):
    ids = np.array([0, 1, 2, 41, 2**31, 2**40 + 3, 2**63 - 1], dtype=np.int64)
    got = shard_of(ids, n_shards)
    assert got.dtype == np.int64 and got.shape == ids.shape
    assert got.tolist() == [_splitmix64(int(i)) % n_shards for i in ids]
    assert shard_of(ids.reshape(7, 1), n_shards).shape == (7, 1)


@pytest.mark.parametrize("ids", [np.arange(16_000), np.arange(0, 8 * 16_000, 8), np.arange(10**12, 10**12 + 16_000)], ids=["consecutive", "multiples-of-S", "large"])
def test_shard_of_spreads_ids_evenly(ids):
    counts = np.bincount(shard_of(ids, 8), minlength=8)
    expected = len(ids) / 8
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 30, counts  # 7 degrees of freedom: p < 1e-4 for an even spread; `id % 8` fails "multiples-of-S"


def test_shard_of_a_scalar_is_silent_and_keeps_its_shape():
    """A 0-d input must not fall back to NumPy scalar arithmetic, which warns when the hash wraps."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = shard_of(5, 4)
        assert isinstance(got, np.ndarray) and got.shape == () and got.dtype == np.int64 and int(got) == _splitmix64(5) % 4
        assert int(shard_of(np.int64(2**63 - 1), 1024)) == _splitmix64(2**63 - 1) % 1024
        assert shard_of(np.arange(6), 3).tolist() == [_splitmix64(i) % 3 for i in range(6)]


@pytest.mark.parametrize("ids, n_shards", [([-1, 2], 4), (np.array([1.0, 2.0]), 4), ([1, 2], 0), ([1, 2], 1025), ([1, 2], True), ([1], 2.0)])
def test_shard_of_refuses_bad_input(ids, n_shards):
    with pytest.raises(ScaleError):
        shard_of(ids, n_shards)


# ------------------------------------------------------------------------------------ local backend
@pytest.mark.parametrize("n_shards", [1, 2, 3, 8])
@pytest.mark.parametrize("name", list(EXACT_KINDS))
def test_local_exact_kinds_equal_unsharded(data, name, n_shards):
    x, q = data
    kind, params = _kind(name)
    D0, I0 = _unsharded(kind, params, x).search(q, K)
    with ShardedIndex(kind, DIM, n_shards, backend="local", **params) as index:
        index.train(x)
        index.add(x)
        info = {}
        D, I = index.search(q, K, stats=info.update)  # noqa: E741
        assert len(index) == N and sum(index.shard_sizes()) == N and len(index.shard_sizes()) == n_shards
    assert D.dtype == np.float32 and I.dtype == np.int64 and D.shape == I.shape == (len(q), K)
    assert (I == I0).all(axis=1).mean() == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-4)
    assert info["partial"] is False and info["missing_shards"] == [] and info["shards_answered"] == n_shards


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_local_similarity_metrics_merge_largest_first(data, metric):
    x, q = data
    D0, I0 = _unsharded("exact", {}, x, metric).search(q, K)
    with ShardedIndex("exact", DIM, 3, metric=metric) as index:
        index.add(x)
        D, I = index.search(q, K)  # noqa: E741
    assert (I == I0).all() and (np.diff(D, axis=1) <= 0).all()
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_shards", [2, 8])
@pytest.mark.parametrize("name", list(IVF_KINDS))
def test_local_ivf_recall_matches_unsharded(data, name, n_shards):
    """Shared centroids: every shard probes the lists the unsharded index probes, so recall is the same."""
    x, q = data
    kind, params = _kind(name)
    truth = _unsharded("exact", {}, x).search(q, K)[1]
    I0 = _unsharded(kind, params, x).search(q, K)[1]
    with ShardedIndex(kind, DIM, n_shards, **params) as index:
        index.train(x)
        index.add(x)
        I = index.search(q, K)[1]  # noqa: E741
        I_wide = index.search(q, K, params={"nprobe": 32})[1]
    assert abs(_recall(I, truth) - _recall(I0, truth)) <= 0.005
    assert _recall(I0, truth) < 0.99  # nprobe=4 of 32 really is approximate, so the check above has teeth
    assert _recall(I_wide, truth) == 1.0  # per-call params reach every shard: nprobe=nlist is exact


def test_local_agrees_with_faiss_index_shards(data):
    """Faiss's own single-process sharding (successive ids, contiguous blocks per shard) gives the same answer."""
    x, q = data
    reference = faiss.IndexShards(DIM, False, True)
    flats = [faiss.IndexFlatL2(DIM) for _ in range(4)]
    for flat in flats:
        reference.add_shard(flat)
    reference.add(x)
    D_ref, I_ref = reference.search(q, K)
    with ShardedIndex("faiss", DIM, 4, factory="Flat") as index:
        index.add(x)
        D, I = index.search(q, K)  # noqa: E741
    assert (I == I_ref).all()
    np.testing.assert_allclose(D, D_ref, rtol=1e-5, atol=1e-4)


def test_local_add_routes_by_shard_of_and_remove_finds_them(data):
    x, q = data
    rng = np.random.default_rng(1)
    ids = rng.choice(10**9, size=N, replace=False).astype(np.int64)
    with ShardedIndex("exact", DIM, 5) as index:
        index.add(x, ids=ids)
        for i, shard in enumerate(index._shards):
            assert len(shard) and (shard_of(shard.ids, 5) == i).all()
        assert sorted(index.ids.tolist()) == sorted(ids.tolist())
        gone = ids[:300]
        assert index.remove(np.concatenate([gone, [10**9 + 5, -3]])) == 300  # absent and impossible ids are ignored
        assert index.remove(gone) == 0 and len(index) == N - 300
        I = index.search(q, 50)[1]  # noqa: E741
        assert not np.isin(I, gone).any()
        keep = _unsharded("exact", {}, x[300:])
        assert (I == ids[300:][keep.search(q, 50)[1]]).all()
        index.add(x[:2])  # default ids: consecutive after the largest stored
        assert sorted(index.ids.tolist())[-2:] == [int(ids[300:].max()) + 1, int(ids[300:].max()) + 2]


def test_local_default_ids_are_consecutive_and_even(data):
    x, _ = data
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:1000])
        index.add(x[1000:])
        assert sorted(index.ids.tolist()) == list(range(N))
        sizes = index.shard_sizes()
        assert min(sizes) > N / 4 * 0.85 and max(sizes) < N / 4 * 1.15, sizes


@pytest.mark.parametrize("name", ["exact", "ivf"])
def test_local_pads_when_k_exceeds_len(data, name):
    x, q = data
    kind, params = _kind(name)
    with ShardedIndex(kind, DIM, 8, **params) as index:
        index.train(x)
        index.add(x[:5])
        D, I = index.search(q[:3], 10)  # noqa: E741
        assert D.shape == I.shape == (3, 5)
        if name == "exact":
            assert sorted(I[0].tolist()) == [0, 1, 2, 3, 4]
        assert ((I >= 0) | (D == np.inf)).all() and (I[D == np.inf] == -1).all()
        D0, I0 = index.search(q[:3], 0)
        assert D0.shape == I0.shape == (3, 0)


def test_local_bad_batch_changes_nothing(data):
    x, _ = data
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:100])
        before = (index.shard_sizes(), sorted(index.ids.tolist()))
        bad_rows = x[100:200].copy()
        bad_rows[57, 3] = np.nan
        with pytest.raises(VectorIndexError, match="row 57"):
            index.add(bad_rows)
        with pytest.raises(VectorIndexError, match="already in the index"):
            index.add(x[100:200], ids=np.concatenate([np.arange(500, 599), [7]]))  # id 7 is stored, 99 new ids fine
        with pytest.raises(VectorIndexError, match="more than once"):
            index.add(x[100:102], ids=[900, 900])
        with pytest.raises(VectorIndexError, match="dimension"):
            index.add(x[100:200, :10])
        with pytest.raises(VectorIndexError):
            index.add(x[100:200], ids=np.arange(100.0, 200.0))
        assert (index.shard_sizes(), sorted(index.ids.tolist())) == before


def test_local_failure_on_one_shard_rolls_back_the_others(data):
    """A shard that fails after the batch was checked (here: another model's vectors, known only to it) undoes the others."""
    x, _ = data
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:100])
        index._shards[3].model_version = "other-model"  # as if shard 3 held another model's vectors
        before = index.shard_sizes()
        with pytest.raises(VectorIndexError, match="other-model"):
            index.add(x[100:200], model_version="m1")
        assert index.shard_sizes() == before


@pytest.mark.parametrize(
    "args, kwargs, error",
    [
        (("exact", DIM, 0), {}, ScaleError),
        (("exact", DIM, 1025), {}, ScaleError),
        (("exact", DIM, "4"), {}, ScaleError),
        (("exact", DIM, 2), {"backend": "spark"}, ScaleError),
        (("exact", DIM, 2), {"deadline_s": -1}, ScaleError),
        (("exact", DIM, 2), {"deadline_s": float("nan")}, ScaleError),
        (("nope", DIM, 2), {}, VectorIndexError),
        (("ivf", DIM, 2), {"nlist": 0}, VectorIndexError),
        (("ivf", DIM, 2), {"n_list": 8}, VectorIndexError),
        (("exact", 0, 2), {}, VectorIndexError),
    ],
)
def test_bad_construction_is_refused(args, kwargs, error):
    with pytest.raises(error):
        ShardedIndex(*args, **kwargs)


def test_local_bad_searches_are_refused(data):
    x, q = data
    with ShardedIndex("ivf", DIM, 3, nlist=16) as index:
        index.train(x)
        with pytest.raises(VectorIndexError, match="empty"):
            index.search(q, K)
        index.add(x)
        for call, error in [
            (lambda: index.search(q, -1), VectorIndexError),
            (lambda: index.search(q[:, :5], K), VectorIndexError),
            (lambda: index.search(q, K, params={"efSearch": 3}), VectorIndexError),
            (lambda: index.search(q, K, params={"nprobe": 0}), VectorIndexError),
            (lambda: index.search(q, K, stats={}), VectorIndexError),
            (lambda: index.search(q, K, deadline_s=0), ScaleError),
            (lambda: index.train(x), VectorIndexError),  # it holds vectors encoded with the current centroids
            (lambda: index.kill_shard(0), ScaleError),  # needs actors
            (lambda: index.slow_shard(3, 1.0), ScaleError),  # no shard 3
        ]:
            with pytest.raises(error):
                call()
    with pytest.raises(ScaleError, match="closed"):
        index.search(q, K)


def test_ivf_add_before_train_is_refused(data):
    x, _ = data
    with ShardedIndex("ivf", DIM, 2, nlist=16) as index, pytest.raises(VectorIndexError, match="trained"):
        index.add(x)


@pytest.mark.parametrize("slow", [[2], [0, 3]])
def test_local_deadline_returns_partial_with_the_slow_shards_missing(data, slow):
    x, q = data
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x)
        D0, I0 = index.search(q, K)
        for i in slow:
            index.slow_shard(i, 1.0)
        t = time.perf_counter()
        result = index.search_with_info(q, K, deadline_s=0.2)
        elapsed = time.perf_counter() - t
        assert elapsed < 0.2 + 0.25
        assert result.partial and result.missing_shards == slow and result.shards_answered == 4 - len(slow)
        assert result.D.shape == (len(q), K) and all(result.shard_ms[i] is None for i in slow)
        slow_ids = np.concatenate([index._shards[i].ids for i in slow])
        assert not np.isin(result.I, slow_ids).any()
        answered = np.setdiff1d(np.arange(N), slow_ids)  # the partial answer is the exact top-k of what answered
        assert (result.I == build_index("exact", DIM).add(x[answered], ids=answered).search(q, K)[1]).all()
        for i in slow:
            index.slow_shard(i, 0)
        info = {}
        assert (index.search(q, K, deadline_s=5, stats=info.update)[1] == I0).all() and not info["partial"]


def test_local_concurrent_searches_do_not_interfere(data):
    x, q = data
    with ShardedIndex("ivf", DIM, 4, nlist=32, nprobe=2) as index:
        index.train(x)
        index.add(x)
        expected = {p: index.search(q, K, params={"nprobe": p})[1] for p in (1, 4, 32)}
        errors = []

        def worker(p):
            for _ in range(5):
                if not (index.search(q, K, params={"nprobe": p})[1] == expected[p]).all():
                    errors.append(p)

        threads = [threading.Thread(target=worker, args=(p,)) for p in (1, 4, 32, 1, 32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert not (expected[1] == expected[32]).all()


@pytest.mark.parametrize("name", ["exact", "ivf"])
def test_local_save_and_load_round_trip(data, tmp_path, name):
    x, q = data
    kind, params = _kind(name)
    with ShardedIndex(kind, DIM, 3, model_version="m1", **params) as index:
        index.train(x)
        index.add(x, model_version="m1")
        index.remove(np.arange(10))
        D0, I0 = index.search(q, K)
        sizes = index.shard_sizes()
        index.save(tmp_path / "sharded")
    with ShardedIndex.load(tmp_path / "sharded") as loaded:
        assert loaded.shard_sizes() == sizes
        assert len(loaded) == N - 10 and loaded.model_version == "m1" and loaded.is_trained
        D, I = loaded.search(q, K)  # noqa: E741
        assert (I == I0).all() and np.array_equal(D, D0)
        with pytest.raises(VectorIndexError, match="model"):
            loaded.add(x[:2], model_version="m2")


def test_load_refuses_ids_on_the_wrong_shard(data, tmp_path):
    x, _ = data
    with ShardedIndex("exact", DIM, 2) as index:
        index.add(x[:50])
        index.save(tmp_path / "s")
    names = sorted(p.name for p in (tmp_path / "s").glob("*.vsindex"))
    a, b = tmp_path / "s" / names[0], tmp_path / "s" / names[1]
    a_bytes = a.read_bytes()
    a.write_bytes(b.read_bytes())
    b.write_bytes(a_bytes)
    with pytest.raises(ScaleError, match="belongs on shard"):
        ShardedIndex.load(tmp_path / "s")


def test_the_local_backend_never_imports_ray():
    code = (
        "import sys, numpy as np\n"
        "from visual_search.scale.sharded import ShardedIndex\n"
        "x = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)\n"
        "with ShardedIndex('exact', 8, 3) as index:\n"
        "    index.add(x); index.search(x[:2], 3, deadline_s=5)\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_measure_shard_latency_reports_exact_merges(data):
    x, q = data
    rows = measure_shard_latency(x, q[:20], shard_counts=(1, 3), kind="exact", backend="local", k=5, n_single=5, repeats=1)
    assert [r["n_shards"] for r in rows] == [1, 3]
    for r in rows:
        assert r["exact_match"] == 1.0 and 0 < r["p50_ms"] <= r["p95_ms"] and r["batch_qps"] > 0


def test_local_straggler_costs_only_its_own_shard_on_every_call(data):
    """A shard past its deadline must not hold up a healthy shard: not in this call, a later one, or a concurrent one."""
    x, q = data
    with ShardedIndex("exact", DIM, 2) as index:
        index.add(x[:200])
        index.slow_shard(0, 1.0)
        for _ in range(3):  # one shared pool once let calls 2 and 3 queue behind the abandoned straggler: 0 shards
            t = time.perf_counter()
            result = index.search_with_info(q[:5], K, deadline_s=0.2)
            assert time.perf_counter() - t < 0.2 + 0.25
            assert result.missing_shards == [0] and result.shards_answered == 1, result.stats()
        index.slow_shard(0, 0)
        assert not index.search_with_info(q[:5], K, deadline_s=0.5).partial  # at once, not after the stragglers finish
    with ShardedIndex("exact", DIM, 3) as index:
        index.add(x[:300])
        index.slow_shard(1, 1.0)
        results, errors = [], []

        def caller():
            try:
                for _ in range(3):
                    results.append(index.search_with_info(q[:5], K, deadline_s=0.3))
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)

        callers = [threading.Thread(target=caller) for _ in range(2)]
        for t in callers:
            t.start()
        for t in callers:
            t.join()
        assert not errors and len(results) == 6
        assert all(r.missing_shards == [1] and r.shards_answered == 2 for r in results), [r.stats() for r in results]


def _spy_on_shard_writes(monkeypatch, shard_cls, look) -> dict:
    """Call ``look()`` after each shard's part of an add or remove: what a concurrent reader would see then.

    Returns the control: set ``["fail_on"] = n`` to make the n-th shard add from then on raise instead
    (a shard failing after others took their part).
    """
    control = {"fail_on": None, "calls": 0}
    for name in ("add", "remove"):
        original = getattr(shard_cls, name)

        def spy(self, *args, _original=original, _name=name, **kwargs):
            if _name == "add" and control["fail_on"] is not None:
                control["calls"] += 1
                if control["calls"] == control["fail_on"]:
                    raise VectorIndexError("shard write failed")
            out = _original(self, *args, **kwargs)
            look()
            return out

        monkeypatch.setattr(shard_cls, name, spy)
    return control


def test_local_writes_are_all_or_nothing_to_readers(data, monkeypatch):
    """Between one shard's part of a write and the next, readers still see the index before the write."""
    x, q = data
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:400])

        def state():
            return len(index), index.shard_sizes(), sorted(index.ids.tolist()), index.search(q[:3], 5)[1].tolist()

        seen = []
        control = _spy_on_shard_writes(monkeypatch, type(index._shards[0]), lambda: seen.append(state()))
        for write in (lambda: index.add(x[400:800]), lambda: index.remove(np.arange(0, 800, 3))):
            before = state()
            seen.clear()
            write()
            assert len(seen) == 4 and all(s == before for s in seen)  # every shard took part; none was visible early
            assert state() != before
        assert len(index) == 800 - len(range(0, 800, 3))

        before = state()
        seen.clear()
        control["fail_on"] = 3
        with pytest.raises(VectorIndexError, match="shard write failed"):
            index.add(x[800:1000])
        assert len(seen) == 2 and all(s == before for s in seen)  # nor the half that a rollback used to undo
        assert state() == before


def test_local_model_version_mirrors_base_index(data, monkeypatch):
    x, q = data
    # Named by the first add to an empty index, on every shard, the batch's or not; then enforced.
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:1], model_version="A")
        assert index.model_version == "A" and [s.model_version for s in index._shards] == ["A"] * 4
        index.add(x[1:100])
        with pytest.raises(VectorIndexError, match="model"):
            index.add(x[100:200], model_version="B")
        with pytest.raises(VectorIndexError, match="model 'A'"):
            index.search(q, K, model_version="B")
        assert index.search(q, K, model_version="A")[1].shape == (len(q), K) and len(index) == 100
    # A non-empty index without a model version is not named by a later add, as BaseIndex is not.
    reference = build_index("exact", DIM).add(x[:50]).add(x[50:100], model_version="A")
    assert reference.model_version is None and reference.search(q, K, model_version="B")[1].shape == (len(q), K)
    with ShardedIndex("exact", DIM, 4) as index:
        index.add(x[:50])
        index.add(x[50:100], model_version="A")
        assert index.model_version is None and all(s.model_version is None for s in index._shards)
        assert index.search(q, K, model_version="B")[1].shape == (len(q), K)
    # A failed add leaves every shard's model version (and data) as it was.
    with ShardedIndex("exact", DIM, 4) as index:
        _spy_on_shard_writes(monkeypatch, type(index._shards[0]), lambda: None)["fail_on"] = 3
        with pytest.raises(VectorIndexError, match="shard write failed"):
            index.add(x[:200], model_version="A")
        assert index.model_version is None and all(s.model_version is None for s in index._shards) and len(index) == 0


@pytest.mark.parametrize("options, named", [({"model_version": "A"}, "model_version"), ({"metric": "ip"}, "metric"), ({"nlist": 8}, "nlist"), ({"kind": "exact"}, "kind")])
def test_load_refuses_options_the_manifest_fixes(data, tmp_path, options, named):
    x, _ = data
    with ShardedIndex("ivf", DIM, 2, nlist=8, model_version="A") as index:
        index.train(x)
        index.add(x[:100], model_version="A")
        index.save(tmp_path / "s")
    with pytest.raises(ScaleError, match=named):  # not a TypeError about a keyword given twice
        ShardedIndex.load(tmp_path / "s", **options)
    with ShardedIndex.load(tmp_path / "s", deadline_s=2.0, threads=1) as loaded:  # the runtime options are fine
        assert loaded.deadline_s == 2.0 and len(loaded) == 100 and loaded.model_version == "A"


@pytest.mark.parametrize("failure", ["cluster-start", "shard-file"])
def test_a_failed_start_removes_its_temporary_shard_dir(data, tmp_path, monkeypatch, failure):
    """The actor backend's own shard folder goes when the start fails (no cluster is started: it fails first)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def fail(*args, **kwargs):
        raise ScaleError("no cluster here") if failure == "cluster-start" else OSError("disk full")

    monkeypatch.setattr(ray_runtime, "start", fail)
    if failure == "shard-file":
        monkeypatch.setattr(sharded, "_index_bytes", fail)
    with pytest.raises((ScaleError, OSError)):
        ShardedIndex("exact", DIM, 2, backend="ray")
    assert not list(tmp_path.glob("vs-shards-*"))


# -------------------------------------------------------------------------------------- ray backend
# Each shard actor is a Ray worker process that takes a second or more to start, so the tests share
# two indexes: the module's 4-shard exact index, and one 2-shard IVF index that the last test closes.
RAY_SHARDS = 4


@pytest.fixture(scope="module")
def ray_exact(ray_local, data, tmp_path_factory):
    """The library's exact index on 4 shard actors, shared by the Ray tests below."""
    x, _ = data
    index = ShardedIndex("exact", DIM, RAY_SHARDS, backend="ray", shard_dir=tmp_path_factory.mktemp("shards"))
    index.add(x[:1500])
    index.add(x[1500:])
    yield index
    index.close()


def test_ray_exact_equals_unsharded(ray_exact, data):
    x, q = data
    D0, I0 = _unsharded("exact", {}, x).search(q, K)
    assert ray_exact.shard_sizes(from_shards=True) == ray_exact.shard_sizes() and len(ray_exact) == N
    info = {}
    D, I = ray_exact.search(q, K, stats=info.update)  # noqa: E741
    assert (I == I0).all(axis=1).mean() == 1.0
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-4)
    assert info["partial"] is False and info["shards_answered"] == RAY_SHARDS
    assert (ray_exact.search(q[:1], 3000)[1] == _unsharded("exact", {}, x).search(q[:1], 3000)[1]).all()  # k > len: every vector, once
    assert {p.name for p in ray_exact.shard_dir.glob("*.vsindex")} == {f"shard-{i:04d}-of-0004.vsindex" for i in range(RAY_SHARDS)}
    with pytest.raises(VectorIndexError, match="already in the index"):
        ray_exact.add(x[:3], ids=[1, 2, 3])
    with pytest.raises(VectorIndexError, match="dimension"):
        ray_exact.search(q[:, :3], K)
    assert len(ray_exact) == N and ray_exact.shard_sizes(from_shards=True) == ray_exact.shard_sizes()


def test_ray_slow_shard_gives_a_partial_answer_within_the_deadline(ray_exact, data):
    x, q = data
    complete = ray_exact.search(q, K)[1]
    answered = np.setdiff1d(np.arange(N), ray_exact._shard_ids[1])
    partial_truth = build_index("exact", DIM).add(x[answered], ids=answered).search(q, K)[1]
    ray_exact.slow_shard(1, 2.0)
    try:
        for _ in range(2):  # the straggler's queued searches must not hold up the next call either
            t = time.perf_counter()
            info = {}
            D, I = ray_exact.search(q, K, deadline_s=0.3, stats=info.update)  # noqa: E741
            elapsed = time.perf_counter() - t
            assert elapsed < 0.3 + 0.3, elapsed
            assert info["partial"] is True and info["missing_shards"] == [1] and info["shards_answered"] == RAY_SHARDS - 1
            assert info["shard_ms"][1] is None and all(ms is not None for i, ms in enumerate(info["shard_ms"]) if i != 1)
            assert I.shape == (len(q), K) and (I == partial_truth).all()  # the exact top-k of the shards that answered
    finally:
        ray_exact.slow_shard(1, 0)
    time.sleep(2.0)  # let the queued slow searches drain
    result = ray_exact.search_with_info(q, K, deadline_s=10)
    assert not result.partial and (result.I == complete).all()


def test_ray_killed_shard_restarts_and_reloads_its_file(ray_exact, data):
    x, q = data
    # A write first, so the reload must bring back the file as rewritten after it, not as first written.
    gone = np.arange(0, N, 7)
    assert ray_exact.remove(gone) == len(gone)
    keep = np.setdiff1d(np.arange(N), gone)
    D0, I0 = build_index("exact", DIM).add(x[keep], ids=keep).search(q, K)
    assert (ray_exact.search(q, K)[1] == I0).all()
    sizes = ray_exact.shard_sizes()
    victim = 2
    old_pid = ray_exact.shard_info()[victim]["pid"]

    ray_exact.kill_shard(victim)
    t = time.perf_counter()
    result = ray_exact.search_with_info(q, K, deadline_s=1.0)
    assert time.perf_counter() - t < 1.0 + 0.3
    if result.partial:
        assert result.missing_shards == [victim]
        assert not np.isin(result.I, ray_exact._shard_ids[victim]).any()
    else:  # Ray restarted it before the query reached it
        assert (result.I == I0).all()

    t = time.perf_counter()
    while True:
        result = ray_exact.search_with_info(q, K, deadline_s=2.0)
        if not result.partial or time.perf_counter() - t > 30:
            break
        time.sleep(0.2)
    assert not result.partial, f"shard {victim} did not come back in 30 s: {result.errors}"
    assert (result.I == I0).all()
    np.testing.assert_allclose(result.D, D0, rtol=1e-5, atol=1e-4)
    assert ray_exact.shard_info()[victim]["pid"] != old_pid  # a new process, which could only have its data from the file
    assert ray_exact.shard_sizes(from_shards=True) == sizes


def test_ray_killed_shard_with_a_slow_reload_is_always_seen_as_partial(ray_exact, data):
    """A restart can beat a deadline when the shard file is tiny; reload_delay_s holds the reload, as a big file would."""
    _, q = data
    victim = 1
    before = ray_exact.search(q, K)[1]
    ray_exact.kill_shard(victim, reload_delay_s=2.0)
    hold = sharded._reload_hold_path(ray_exact._shard_path(victim))
    result = ray_exact.search_with_info(q, K, deadline_s=0.5)
    assert result.partial and result.missing_shards == [victim]
    assert not np.isin(result.I, ray_exact._shard_ids[victim]).any()
    waited = ray_exact.wait_until_complete(timeout_s=60)
    assert waited >= 1.0 and not hold.exists()  # the restarted actor waited, then consumed the marker
    assert (ray_exact.search(q, K)[1] == before).all()  # reloaded from its file, the same answers
    with pytest.raises(ScaleError, match="reload_delay_s"):
        ray_exact.kill_shard(victim, reload_delay_s=-1.0)


def test_ray_ivf_equals_unsharded_forwards_params_and_close_stops_actors(ray_local, data):
    x, q = data
    reference = _unsharded("ivf", {"nlist": 32, "nprobe": 4}, x)
    index = ShardedIndex("ivf", DIM, 2, backend="ray", nlist=32, nprobe=4)
    try:
        index.train(x)
        index.add(x)
        for params in (None, {"nprobe": 32}):
            D0, I0 = reference.search(q, K, params=params)
            D, I = index.search(q, K, params=params)  # noqa: E741
            assert (I == I0).all(axis=1).mean() == 1.0
            np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-4)
        assert not (index.search(q, K)[1] == index.search(q, K, params={"nprobe": 32})[1]).all()
        with pytest.raises(VectorIndexError, match="nprobe"):
            index.search(q, K, params={"nprobe": 0})
    finally:
        actors, shard_dir = list(index._actors), index.shard_dir
        assert shard_dir.is_dir()
        index.close()
    index.close()  # idempotent
    for actor in actors:
        with pytest.raises(ray_local.exceptions.RayActorError):
            ray_local.get(actor.info.remote(), timeout=30)
    assert not shard_dir.exists()  # its own temporary folder goes with it
    with pytest.raises(ScaleError, match="closed"):
        index.search(q, K)
