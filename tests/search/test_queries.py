"""Filtered, composed and batch queries equal a brute-force reference (float64 scores, ties by ascending id), for
every index kind and Milvus Lite; bad filters and queries are clear errors."""
import json
import zlib

import numpy as np
import pytest
from test_index import clustered, gallery_npz, unit

from ernievil2.errors import ConfigError
from ernievil2.search import index as index_module
from ernievil2.search.filters import parse_where
from ernievil2.search.index import SearchIndex, build_index
from ernievil2.search.query import compose, search, search_batch

pytest.importorskip("faiss", reason="faiss-cpu is not installed")

DIM = 24


class FakeModel:
    """Texts and images -> fixed unit vectors (seeded by their content): the composition and batching logic is
    what is under test here, not the encoder (the tiny model's CLI test below covers that path)."""
    embed_dim = DIM

    def __init__(self):
        self.calls = []

    def _vector(self, key):
        return unit(np.random.default_rng(zlib.crc32(key.encode())).standard_normal((1, DIM)))[0]

    def encode_text(self, texts):
        self.calls.append(("text", len(texts)))
        return np.stack([self._vector("t:" + t) for t in texts])

    def encode_image(self, images):
        self.calls.append(("image", len(images)))
        return np.stack([self._vector("i:" + str(i)) for i in images])


def make_index(tmp_path, kind="flat", n=600, **build):
    vectors = clustered(n, DIM, clusters=12, seed=3)
    ids = [f"id{i:04d}" for i in range(n)]
    vectors[[10, 20, 30]] = vectors[40]  # ties
    meta = [{"id": i, "folder": ["cats", "dogs", "birds"][j % 3], "size": (j * 37) % 1000, "ratio": j / n,
             "hidden": j % 5 == 0} for j, i in enumerate(ids)]
    path, _ = gallery_npz(tmp_path / "g.npz", vectors, ids=ids)
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    build_index(path, tmp_path / kind, kind=kind, metadata=str(tmp_path / "meta.jsonl"), log=lambda _: None,
                **build)
    return SearchIndex(str(tmp_path / kind)), vectors, ids, meta


def reference(vectors, ids, queries, k, keep=None):
    """Brute force in float64; ties (equal float32 scores) by ascending id; only rows where keep(row)."""
    scores = np.atleast_2d(queries).astype(np.float64) @ vectors.astype(np.float64).T
    rows = [j for j in range(len(ids)) if keep is None or keep(j)]
    return [[ids[j] for j in sorted(rows, key=lambda j: (-np.float32(s[j]), ids[j]))[:k]] for s in scores]


def hit_ids(results):
    return [[h[0] if isinstance(h, tuple) else h["id"] for h in row] for row in results]


FILTERS = [
    ({"folder": "cats"}, lambda m: m["folder"] == "cats"),
    ({"folder": ["cats", "birds"], "hidden": False}, lambda m: m["folder"] in ("cats", "birds") and not m["hidden"]),
    ({"size": {"gte": 100, "lt": 400}}, lambda m: 100 <= m["size"] < 400),
    ({"ratio": {"gt": 0.5}, "folder": "dogs"}, lambda m: m["ratio"] > 0.5 and m["folder"] == "dogs"),
    ({"id": ["id0040", "id0010", "id0599"]}, lambda m: m["id"] in ("id0040", "id0010", "id0599")),  # fewer than k
    ({"size": {"lt": 0}}, lambda m: False),  # nothing matches
]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_pq"])
def test_filtered_top_k_equals_brute_force_on_the_subset(tmp_path, kind):
    index, vectors, ids, meta = make_index(tmp_path, kind)
    queries = np.concatenate([vectors[[40, 7]], unit(np.random.default_rng(5).standard_normal((6, DIM)))])
    for where, keep in FILTERS:
        want = reference(vectors, ids, queries, 10, lambda j: keep(meta[j]))
        assert hit_ids(index.search(queries, 10, where=where)) == want, where
    # many queries at once: flat takes faiss's ID selector instead of the masked product
    many = unit(np.random.default_rng(8).standard_normal((40, DIM)))
    for where, keep in FILTERS[:3]:
        assert hit_ids(index.search(many, 10, where=where)) == \
            reference(vectors, ids, many, 10, lambda j: keep(meta[j])), where


def test_approximate_over_fetch_is_checked_and_falls_back_to_exact(tmp_path, monkeypatch):
    index, vectors, ids, meta = make_index(tmp_path, "hnsw")
    monkeypatch.setattr(index_module, "EXACT_SUBSET_ROWS", 0)  # force the over-fetch path
    queries = unit(np.random.default_rng(6).standard_normal((20, DIM)))
    common = {"folder": ["cats", "dogs"]}  # two thirds match: the over-fetch finds enough
    got = hit_ids(index.search(queries, 10, where=common))
    # the over-fetch is the index's own top (k + margin) x 2 x N / subset candidates, of which the matching ones
    wide = (10 + index_module.TIE_MARGIN) * 2 * 2
    scores, rows = index.store.search(queries, wide)  # (its scores: hnsw rounds tied vectors its own way)
    expected = [[i for _, i in sorted([(-s, ids[r]) for s, r in zip(srow, row) if meta[r]["folder"] != "birds"]
                                      [:10 + index_module.TIE_MARGIN])[:10]] for srow, row in zip(scores, rows)]
    assert got == expected
    rare = {"id": ids[::97]}  # 7 rows: the over-fetch cannot hold k of them, so the subset is scored exactly
    assert hit_ids(index.search(queries, 5, where=rare)) == \
        reference(vectors, ids, queries, 5, lambda j: j % 97 == 0)


def test_milvus_filter_expressions_equal_brute_force(tmp_path):
    pytest.importorskip("pymilvus", reason="pymilvus is not installed")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed")
    index, vectors, ids, meta = make_index(tmp_path, "flat", n=300, backend="milvus", uri=str(tmp_path / "m.db"))
    queries = unit(np.random.default_rng(7).standard_normal((4, DIM)))
    for where, keep in FILTERS:
        got = index.search(queries, 10, where=where)
        want = reference(vectors, ids, queries, 10, lambda j: keep(meta[j]))
        # Milvus orders equal scores its own way: compare as sets of rank ranges with distinct scores
        assert [sorted(r) for r in hit_ids(got)] == [sorted(r) for r in want], where


def test_bad_filters_are_clear_errors(tmp_path):
    index, vectors, _, _ = make_index(tmp_path, "flat", n=60)
    q = vectors[0]
    for where, message in [({"colour": "red"}, "unknown filter field 'colour'; this index has: folder, hidden, id"),
                           ({"size": "big"}, "filter size: 'big' is not a number"),
                           ({"folder": {"gte": 3}}, "ranges .* need a numeric field"),
                           ({"size": {"above": 3}}, "a range takes gt, gte, lt, lte"),
                           ({"folder": 3}, "is a number but folder holds text"),
                           ({"folder": []}, "an empty set of values matches nothing"),
                           ("folder=cats", "a filter must be an object")]:
        with pytest.raises(ConfigError, match=message):
            index.search(q, 5, where=where)
    assert parse_where(["folder=cats|dogs", "size>=10", "size<20"]) == \
        {"folder": ["cats", "dogs"], "size": {"gte": "10", "lt": "20"}}
    assert hit_ids(index.search(q, 60, where=index.fields.check(parse_where(["size>=10", "size<20"]))))[0] == \
        [i for i in reference(vectors, index.ids, q, 60)[0] if 10 <= index.metadata[index.ids.index(i)]["size"] < 20]
    with pytest.raises(ConfigError, match="expected FIELD=VALUE"):
        parse_where(["folder"])


def test_composed_queries_equal_the_weighted_normalised_sum(tmp_path):
    index, vectors, ids, _ = make_index(tmp_path, "flat", n=200)
    model = FakeModel()
    terms = [{"text": "红色汽车"}, {"image": "car.jpg", "weight": 0.5}, {"text": "雨天", "weight": -1}]
    want = (model.encode_text(["红色汽车"])[0] + 0.5 * model.encode_image(["car.jpg"])[0]
            - model.encode_text(["雨天"])[0])
    want = want.astype(np.float64) / np.linalg.norm(want.astype(np.float64))
    np.testing.assert_allclose(compose(model, terms), want, atol=8 * np.finfo(np.float32).eps)  # a few roundings
    got = search(model, index, terms=terms, k=10, where={"folder": "dogs"})
    assert [h["id"] for h in got] == reference(vectors, ids, compose(model, terms), 10,
                                               lambda j: ["cats", "dogs", "birds"][j % 3] == "dogs")[0]
    for bad, message in [([], "needs at least one term"), ([{"text": " "}], "empty text"),
                         ([{"text": "a"}, {"text": "a", "weight": -1}], "the terms cancel out"),
                         ([{"text": "a", "image": "b"}], "must be"), ([{"text": "a", "weight": "x"}], "weight")]:
        with pytest.raises(ConfigError, match=message):
            search(model, index, terms=bad, k=3)


def test_batches_equal_one_call_each_with_one_model_call_per_kind(tmp_path):
    index, vectors, ids, _ = make_index(tmp_path, "flat", n=200)
    model = FakeModel()
    queries = ["猫", {"text": "狗", "k": 3}, {"image": "a.jpg", "where": {"folder": "cats"}},
               {"terms": [{"text": "猫"}, {"image": "b.jpg", "weight": -0.5}]}, "鸟"]
    got = search_batch(model, index, queries, k=5)
    assert model.calls == [("text", 4), ("image", 2)]
    for query, results in zip(queries, got):
        single = search(FakeModel(), index, **{"k": 5, **({"text": query} if isinstance(query, str) else query)})
        assert [(h["id"], h["metadata"]) for h in results] == [(h["id"], h["metadata"]) for h in single]
        # one product of several queries may round differently from one of a single query: DIM terms of unit
        # vectors, each rounding at most eps (float32), plus the 6-digit rounding of the answer
        np.testing.assert_allclose([h["score"] for h in results], [h["score"] for h in single],
                                   atol=DIM * np.finfo(np.float32).eps + 1e-6)
    assert [len(r) for r in got] == [5, 3, 5, 5, 5]
    with pytest.raises(ConfigError, match="the batch holds 5 queries, over the limit of 4"):
        search_batch(model, index, queries, limit=4)
    with pytest.raises(ConfigError, match="query 2: give exactly one of text, image or terms"):
        search_batch(model, index, ["a", {"k": 3}])
