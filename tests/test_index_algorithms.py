"""Each hand-written piece against its library twin or a closed form.

k-means vs scikit-learn and Faiss; the KD-tree's batched search vs its textbook
recursive version; LSH's collision probability vs 1 - theta/pi; PQ's ADC vs the
distance to the decoded vector; IVF with nprobe = nlist vs exact; own IVF-PQ vs
Faiss IVFPQ; the bounded top-k vs a full sort; MinHash LSH vs exact Jaccard.
"""

from __future__ import annotations

import numpy as np
import pytest

from visual_search.index import VectorIndexError, build_index, load_index
from visual_search.index.kdtree import build_kdtree
from visual_search.index.kernels import topk_smallest
from visual_search.index.kmeans import assign, kmeans, kmeans_plus_plus
from visual_search.index.lsh import probe_masks
from visual_search.index.minhash import NearDuplicateIndex, image_tokens, jaccard
from visual_search.index.pq import ProductQuantizer
from visual_search.index.validation import as_float32_matrix


def blobs(n=2000, dim=8, centres=10, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(0, 5, (centres, dim))
    return (c[rng.integers(centres, size=n)] + rng.normal(0, 1, (n, dim))).astype(np.float32)


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


# ------------------------------------------------------------------ top-k selection
@pytest.mark.parametrize("n,k", [(5, 3), (50, 10), (20_000, 10), (30_000, 100), (40_000, 1)])
def test_topk_smallest_matches_a_full_sort(n, k):
    keys = np.random.default_rng(n).random((7, n), dtype=np.float32)
    pos, vals = topk_smallest(keys, k)
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(pos, order)
    np.testing.assert_array_equal(vals, np.take_along_axis(keys, order, axis=1))


def test_topk_smallest_with_many_ties_takes_the_smaller_positions():
    keys = np.zeros((3, 20_000), np.float32)  # every key equal: the bound keeps them all
    keys[1, 7] = -1
    pos, vals = topk_smallest(keys, 5)
    np.testing.assert_array_equal(pos[0], np.arange(5))
    np.testing.assert_array_equal(pos[1], [7, 0, 1, 2, 3])


def test_float_conversion_names_the_input():
    with pytest.raises(VectorIndexError, match="queries: dtype int32"):
        as_float32_matrix(np.ones((2, 3), np.int32), "queries")
    with pytest.raises(VectorIndexError, match="cannot turn"):
        as_float32_matrix([[1.0, 2.0], [3.0]], "x")


# ------------------------------------------------------------------ k-means
def test_kmeans_matches_scikit_learn_and_faiss_inertia():
    import faiss
    from sklearn.cluster import KMeans

    x = blobs(3000, 8, 12)
    centroids, history = kmeans(x, 12, n_iter=30, seed=0)
    ours = history[-1]
    sk = KMeans(12, n_init=1, random_state=0).fit(x).inertia_ / len(x)
    fk = faiss.Kmeans(8, 12, niter=30, seed=1)
    fk.train(x)
    theirs = assign(x, fk.centroids)[1].mean()
    assert ours <= 1.05 * min(sk, theirs)
    assert all(b <= a * (1 + 1e-5) for a, b in zip(history, history[1:])), "Lloyd's inertia must not increase"


def test_kmeans_plus_plus_picks_distinct_points_spread_over_clusters():
    x = blobs(1000, 4, 5)
    init = kmeans_plus_plus(x, 5, np.random.default_rng(0))
    assert len(np.unique(init, axis=0)) == 5
    labels = assign(init, kmeans(x, 5, seed=0)[0])[0]
    assert len(set(labels.tolist())) >= 4  # D^2 sampling rarely puts two seeds in one blob


def test_kmeans_reseeds_empty_clusters_and_is_reproducible():
    x = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)  # only 3 distinct points, 5 clusters
    centroids, _ = kmeans(x + np.random.default_rng(0).normal(0, 1e-3, x.shape).astype(np.float32), 5, seed=0)
    assert np.isfinite(centroids).all()
    a, _ = kmeans(blobs(), 8, seed=3)
    b, _ = kmeans(blobs(), 8, seed=3)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="at least k=8"):
        kmeans(blobs(5), 8)


# ------------------------------------------------------------------ KD-tree
@pytest.mark.parametrize("dim", [2, 3, 8])
def test_kdtree_batched_search_agrees_with_the_recursive_textbook_version(dim):
    x = blobs(1500, dim)
    q = blobs(30, dim, seed=1)
    index = build_index("kdtree", dim, leaf_size=8).add(x)
    D, I = index.search(q, 5)
    for row, query in enumerate(q):
        dists, ids, visited = index.search_recursive(query, 5)
        np.testing.assert_allclose(dists, D[row], rtol=1e-4, atol=1e-4)
        assert ids == I[row].tolist()
        assert visited <= len(index.tree.leaf_rows)


def test_kdtree_is_balanced_and_prunes_in_low_dimension():
    x = np.random.default_rng(0).random((4096, 2)).astype(np.float32)
    tree = build_kdtree(x, leaf_size=16)
    sizes = (tree.leaf_rows >= 0).sum(axis=1)
    assert tree.depth == 8 and sizes.max() - sizes.min() <= 1 and sizes.sum() == 4096
    assert sorted(tree.leaf_rows[tree.leaf_rows >= 0].tolist()) == list(range(4096))
    index = build_index("kdtree", 2, leaf_size=16).add(x)
    info = {}
    index.search(np.random.default_rng(1).random((200, 2)).astype(np.float32), 10, stats=info.update)
    assert info["leaves_visited"] < 0.05 * len(tree.leaf_rows)  # pruning: a few leaves of 256


def test_kdtree_prunes_less_as_the_dimension_grows():
    visited = []
    for dim in (2, 8, 32):
        x = np.random.default_rng(0).random((4000, dim)).astype(np.float32)
        index = build_index("kdtree", dim, leaf_size=16).add(x)
        info = {}
        index.search(np.random.default_rng(1).random((50, dim)).astype(np.float32), 10, stats=info.update)
        visited.append(info["leaves_visited"] / len(index.tree.leaf_rows))
    assert visited[0] < visited[1] < visited[2] and visited[2] > 0.5  # the curse of dimensionality


def test_kdtree_refuses_inner_product_and_bad_leaf_size():
    with pytest.raises(VectorIndexError, match="does not support metric 'ip'"):
        build_index("kdtree", 4, "ip")
    with pytest.raises(VectorIndexError, match="kdtree: leaf_size must be an integer in"):
        build_index("kdtree", 4, leaf_size=0)


# ------------------------------------------------------------------ LSH
def test_random_hyperplane_collision_probability_is_one_minus_angle_over_pi():
    index = build_index("lsh", 2, n_tables=64, n_bits=62, seed=0)
    index.mean = np.zeros(2, np.float32)
    for angle in (0.2, 0.8, 1.6, 2.5):
        pair = np.array([[1, 0], [np.cos(angle), np.sin(angle)]], np.float32)
        bits = index._projections(pair) > 0
        agree = (bits[0] == bits[1]).mean()
        assert abs(agree - (1 - angle / np.pi)) < 0.04, (angle, agree)


def test_probe_masks_flip_the_bits_nearest_the_query_first():
    margins = np.array([[[0.9, 0.1, 0.5, 2.0]]], np.float32)  # one query, one table, 4 bits
    masks = probe_masks(margins, 4)[0, 0]
    assert masks[0] == 0  # the query's own bucket first
    assert set(masks[1:].tolist()) == {0b0010, 0b0100, 0b0110, 0b0001}  # bit 1, bit 2, bits 1+2, bit 0
    assert probe_masks(margins, 0).shape == (1, 1, 1)


def test_more_probes_and_more_reranking_raise_lsh_recall():
    x, q = blobs(4000, 32, 30), blobs(100, 32, 30, seed=5)
    truth = build_index("exact", 32).add(x).search(q, 10)[1]
    recalls = []
    for probes, rerank in ((0, 50), (8, 100), (32, 400)):
        index = build_index("lsh", 32, n_tables=4, n_bits=14, n_probes=probes, rerank=rerank).train(x).add(x)
        info = {}
        recalls.append(recall(index.search(q, 10, stats=info.update)[1], truth))
    assert recalls[0] < recalls[1] < recalls[2]
    assert info["candidates_per_query"] >= info["reranked_per_query"]


# ------------------------------------------------------------------ IVF
def test_ivf_with_every_list_probed_is_exact():
    x, q = blobs(3000, 16), blobs(50, 16, seed=2)
    D0, I0 = build_index("exact", 16).add(x).search(q, 10)
    index = build_index("ivf", 16, nlist=20, nprobe=20).train(x).add(x)
    D, I = index.search(q, 10)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-3)
    assert index.list_sizes().sum() == 3000


def test_ivf_recall_rises_with_nprobe_and_matches_faiss_ivfflat():
    x, q = blobs(5000, 32, 40), blobs(200, 32, 40, seed=3)
    truth = build_index("exact", 32).add(x).search(q, 10)[1]
    ours = [recall(build_index("ivf", 32, nlist=64, nprobe=p).train(x).add(x).search(q, 10)[1], truth) for p in (1, 4, 16)]
    theirs = recall(build_index("faiss", 32, factory="IVF64,Flat", search_params={"nprobe": 4}).train(x).add(x).search(q, 10)[1], truth)
    assert ours[0] < ours[1] <= ours[2]
    assert abs(ours[1] - theirs) < 0.08


def test_ivf_training_needs_enough_points():
    with pytest.raises(VectorIndexError, match="at least nlist=50"):
        build_index("ivf", 4, nlist=50).train(blobs(20, 4))
    with pytest.raises(VectorIndexError, match="ivf: nprobe must be an integer in"):
        build_index("ivf", 4, nprobe=0)


# ------------------------------------------------------------------ PQ and IVF-PQ
def test_adc_equals_the_distance_to_the_decoded_vector():
    x = blobs(2000, 16)
    pq = ProductQuantizer(16, m=4, nbits=6)
    pq.train(x)
    codes = pq.encode(x[:100])
    q = blobs(5, 16, seed=9)
    approx = pq.adc(pq.tables(q, "l2"), codes)
    closed_form = ((q[:, None, :] - pq.decode(codes)[None]) ** 2).sum(-1)
    np.testing.assert_allclose(approx, closed_form, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(pq.adc(pq.tables(q, "ip"), codes), -(q @ pq.decode(codes).T), rtol=1e-4, atol=1e-3)


def test_more_subquantizers_reconstruct_better():
    x = blobs(3000, 16)
    errors = []
    for m in (2, 4, 8, 16):
        pq = ProductQuantizer(16, m=m, nbits=6)
        pq.train(x)
        errors.append(float(((pq.decode(pq.encode(x)) - x) ** 2).sum(1).mean()))
    assert errors == sorted(errors, reverse=True)


def test_own_ivfpq_recall_is_close_to_faiss_ivfpq():
    x, q = blobs(6000, 32, 50), blobs(200, 32, 50, seed=4)
    truth = build_index("exact", 32).add(x).search(q, 10)[1]
    ours = recall(build_index("ivfpq", 32, nlist=32, nprobe=8, m=8, nbits=8).train(x).add(x).search(q, 10)[1], truth)
    theirs = recall(build_index("faiss", 32, factory="IVF32,PQ8np", search_params={"nprobe": 8}).train(x).add(x).search(q, 10)[1], truth)
    assert ours >= theirs - 0.05, (ours, theirs)


def test_ivfpq_memory_per_vector_is_a_fraction_of_the_raw_vectors():
    x = blobs(5000, 64)
    index = build_index("ivfpq", 64, nlist=16, m=8).train(x)
    fixed = index.memory_bytes()  # centroids, codebooks, precomputed tables
    per_vector = (index.add(x).memory_bytes() - fixed) / len(x)
    assert per_vector == 8 + 4 + 8 + 8  # codes, stored norm term, row, id
    assert per_vector < 0.25 * 4 * 64


def test_pq_parameter_errors_name_the_problem():
    with pytest.raises(VectorIndexError, match="dim=10 is not divisible by m=4"):
        build_index("pq", 10, m=4)
    with pytest.raises(VectorIndexError, match="nbits .codes are stored as uint8. must be an integer in \\[1, 8\\]"):
        build_index("pq", 8, m=4, nbits=12)
    with pytest.raises(VectorIndexError, match="at least 2\\*\\*nbits=256"):
        build_index("pq", 8, m=4).train(blobs(100, 8))


# ------------------------------------------------------------------ build_index and the backends
def test_build_index_errors():
    with pytest.raises(VectorIndexError, match="unknown index kind 'hnsw'"):
        build_index("hnsw", 8)
    with pytest.raises(VectorIndexError, match=r"unknown parameter\(s\) \['nlists'\]"):
        build_index("ivf", 8, nlists=4)
    with pytest.raises(VectorIndexError, match="metric must be one of"):
        build_index("exact", 8, "manhattan")
    with pytest.raises(VectorIndexError, match="dim must be an integer in"):
        build_index("exact", 0)
    with pytest.raises(VectorIndexError, match="cannot build factory string 'Bogus'"):
        build_index("faiss", 8, factory="Bogus")
    with pytest.raises(VectorIndexError, match=r"unknown search parameter\(s\) \[.nprobe.\]; this index accepts \[\]"):
        build_index("faiss", 8, factory="Flat", search_params={"nprobe": 4})


def test_own_exact_matches_faiss_flat_exactly():
    x, q = blobs(3000, 24), blobs(40, 24, seed=8)
    D0, I0 = build_index("faiss", 24, factory="Flat").add(x).search(q, 10)
    D, I = build_index("exact", 24).add(x).search(q, 10)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ MinHash near-duplicates
def test_image_tokens_and_jaccard():
    image = np.zeros((28, 28), np.uint8)
    image[:4, :4] = 255
    assert len(image_tokens(image)) == 4  # 2x2 cells: a 4x4 bright square is 4 cells
    assert image_tokens(np.zeros((28, 28), np.uint8)) == set()
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard(set(), set()) == 1.0
    with pytest.raises(VectorIndexError, match="divisible by cell=2"):
        image_tokens(np.zeros((27, 28)))


def test_minhash_lsh_finds_near_duplicates_that_exact_jaccard_confirms(sample):
    gallery = sample.gallery_images[:400]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(gallery), 40, replace=False)
    copies = np.clip(gallery[pick] * rng.uniform(0.9, 1.1, (40, 1, 1)) + rng.normal(0, 5, (40, 28, 28)), 0, 255).astype(np.uint8)
    index = NearDuplicateIndex(threshold=0.8)
    index.add(list(range(len(gallery))), gallery)
    found = index.query(copies)
    exact_hits = [jaccard(image_tokens(c), image_tokens(gallery[p])) >= 0.8 for c, p in zip(copies, pick)]
    hits = [p in f for p, f in zip(pick, found)]
    assert np.mean(hits) >= 0.8 * np.mean(exact_hits) and np.mean(exact_hits) > 0.8
    for copy, keys in zip(copies, found):  # verified results really are above the threshold
        assert all(jaccard(image_tokens(copy), index.tokens[key]) >= 0.8 for key in keys)
    with pytest.raises(VectorIndexError, match="unique"):
        index.add([0], gallery[:1])


# ------------------------------------------------------------------ edge cases found in review
@pytest.mark.parametrize("n", [1, 2, 3, 5, 6, 7, 33])
def test_kdtree_with_tiny_leaves_never_has_an_empty_leaf(n):
    x = np.random.default_rng(n).random((n, 2)).astype(np.float32)
    index = build_index("kdtree", 2, leaf_size=1).add(x)
    assert ((index.tree.leaf_rows >= 0).sum(axis=1) >= 1).all()
    D, I = index.search(x, min(3, n))
    np.testing.assert_array_equal(I[:, 0], np.arange(n))  # every point finds itself
    with pytest.raises(VectorIndexError, match="k must be a positive integer"):
        index.search_recursive(x[0], 0)


def test_lsh_candidates_work_before_and_after_adding():
    x = blobs(300, 8)
    index = build_index("lsh", 8, n_tables=4, n_bits=6, n_probes=2).train(x).add(x[:100])
    first = index.candidates(x[:5])
    index.add(x[100:])
    later = index.candidates(x[:5])
    assert all(set(a) <= set(b) for a, b in zip(first, later)) and all(len(c) for c in later)
    assert all(row in cands for row, cands in enumerate(later))  # a stored vector shares its own buckets


def test_small_training_caps_and_numpy_parameters(tmp_path):
    x = blobs(500, 4)
    index = build_index("ivf", 4, nlist=16, max_train_points=np.int64(5)).train(x).add(x)  # cap below nlist: uses nlist points
    assert index.params()["max_train_points"] == 5 and type(index.params()["max_train_points"]) is int
    assert len(load_index(index.save(tmp_path / "ivf.vsi"))) == 500
    with pytest.raises(VectorIndexError, match="ivf: max_train_points must be an integer in"):
        build_index("ivf", 4, max_train_points=0)


def test_huge_cosine_vectors_are_normalised_not_zeroed():
    with pytest.raises(VectorIndexError, match="magnitude 4e\\+19"):
        build_index("exact", 2, "cosine").add(np.array([[3e19, 4e19]], np.float32))
    x = np.array([[3e14, 4e14], [1.0, 0.0]], np.float32)
    index = build_index("exact", 2, "cosine").add(x)
    D, I = index.search(np.array([[3.0, 4.0]], np.float32), 1)
    assert I[0, 0] == 0 and D[0, 0] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ merge_topk and exact_search
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_merge_topk_of_shards_equals_one_exact_search(metric):
    """What a sharded index does: search each shard, merge the partial top-k lists."""
    from visual_search.index import exact_search, merge_topk

    x, q = blobs(900, 8), blobs(20, 8, seed=3)
    parts = [build_index("exact", 8, metric).add(x[s : s + 300], ids=np.arange(s, s + 300)).search(q, 10) for s in (0, 300, 600)]
    D, I = merge_topk([p[0] for p in parts], [p[1] for p in parts], 10, larger_is_better=metric != "l2")
    D0, I0 = exact_search(q, x, 10, metric)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
    # Padding (-1) never wins, even against the worst real result.
    padded_D = np.full((len(q), 3), -np.inf if metric == "l2" else np.inf, np.float32)  # an impossible "best" score
    D2, I2 = merge_topk([D0, padded_D], [I0, np.full((len(q), 3), -1)], 10, larger_is_better=metric != "l2")
    np.testing.assert_array_equal(I2, I0)


def test_exact_search_breaks_ties_by_the_lower_id_and_caps_k():
    from visual_search.index import exact_search

    base = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    D, I = exact_search(np.array([[1, 0]], np.float32), base, 10)
    assert I.tolist() == [[0, 2, 3, 1]] and D.shape == (1, 4)
    with pytest.raises(VectorIndexError, match="k must be a non-negative integer"):
        exact_search(base, base, -1)


@pytest.mark.parametrize("params, message", [
    ({"threshold": 1.0}, "minhash: threshold"),
    ({"threshold": float("nan")}, "minhash: threshold"),
    ({"num_perm": 10**6}, "minhash: num_perm"),
    ({"num_perm": 0}, "minhash: num_perm"),
    ({"seed": -1}, "minhash: seed"),
])
def test_minhash_parameters_are_checked(params, message):
    with pytest.raises(VectorIndexError, match=message):
        NearDuplicateIndex(**params)
