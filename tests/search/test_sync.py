"""index sync: after adding 10 images, replacing 3 and deleting 5, a synced index has exactly the ids and top-k of a
fresh build of the folder (flat faiss, Milvus Lite, ivf_pq within its recall), also when the sync was interrupted
and resumed; a source the index was not built from is refused; every build and sync raises the version."""
import json
import os
import time

import cv2
import numpy as np
import pytest

from ernievil2.errors import ConfigError, InputError
from ernievil2.search.index import SearchIndex, build_index

pytest.importorskip("faiss", reason="faiss-cpu is not installed")


class Encoder:
    """The tiny model's eager encoder, counting images and optionally failing after `fail_after` batches."""

    def __init__(self, fail_after=None):
        from conftest import make_tiny_model
        from ernievil2.infer.engines import EagerEncoder
        self.inner = EagerEncoder(make_tiny_model(seed=5))
        self.images, self.batches, self.fail_after = 0, 0, fail_after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def encode_image(self, pixels):
        if self.fail_after is not None and self.batches >= self.fail_after:
            raise KeyboardInterrupt("interrupted")
        self.batches += 1
        self.images += len(pixels)
        return self.inner.encode_image(pixels)


def write_image(path, seed, when=None):
    rgb = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), rgb)
    if when is not None:
        os.utime(path, ns=(when, when))


def make_folder(root, count=20):
    for i in range(count):
        write_image(root / ("cats" if i % 2 else "dogs") / f"p{i:02d}.png", i)


def change_folder(root):
    """Add 10 images, replace 3 (new content, later mtime), delete 5."""
    later = time.time_ns() + 10 ** 10  # after any embeddings written so far
    for i in range(20, 30):
        write_image(root / "birds" / f"p{i:02d}.png", i)
    for i in (2, 3, 4):
        path = root / ("cats" if i % 2 else "dogs") / f"p{i:02d}.png"
        write_image(path, 100 + i, when=later)
    for i in (5, 6, 7, 8, 9):
        os.remove(root / ("cats" if i % 2 else "dogs") / f"p{i:02d}.png")


def fresh_build(tiny, root, tmp_path, name, **build):
    from ernievil2.infer.gallery import load_embed_config, run_embed
    npz = tmp_path / f"{name}.npz"
    cfg = load_embed_config(None, list({**tiny, "images": str(root), "output_file": str(npz)}.items()))
    run_embed(cfg, encoder=Encoder())
    build_index(str(npz), tmp_path / name, log=lambda _: None, **build)
    return SearchIndex(str(tmp_path / name)), npz


def sync(tiny, index_dir, encoder=None, **kw):
    from ernievil2.search.sync import sync_index
    overrides = [(k, v) for k, v in tiny.items() if k != "output_file"]
    return sync_index(None, overrides, str(index_dir), encoder=encoder or Encoder(), log=lambda _: None, **kw)


def assert_same_index(synced, fresh, queries, exact=True):
    assert synced.ids == fresh.ids
    got, want = synced.search(queries, 5), fresh.search(queries, 5)
    assert [[h[0] for h in row] for row in got] == [[h[0] for h in row] for row in want]
    # the same images embedded by the same model (batches may differ: float32 sums in another order)
    np.testing.assert_allclose([[h[1] for h in row] for row in got], [[h[1] for h in row] for row in want],
                               atol=1e-5)


def queries_of(index, seed=0):
    vectors = np.asarray(index.vectors(), np.float32)
    noise = np.random.default_rng(seed).standard_normal((8, vectors.shape[1])).astype(np.float32)
    q = np.concatenate([vectors[:4], vectors[:8] + 0.5 * noise])
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_sync_of_a_built_index_equals_a_fresh_build(tiny, tmp_path):
    root = tmp_path / "photos"
    make_folder(root)
    index, _ = fresh_build(tiny, root, tmp_path, "index")
    assert index.version == 1
    change_folder(root)
    summary = sync(tiny, tmp_path / "index")
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (10, 3, 5, 12)
    assert summary.embedded == 13 and summary.version == 2
    fresh, _ = fresh_build(tiny, root, tmp_path, "fresh")
    synced = SearchIndex(str(tmp_path / "index"))
    assert_same_index(synced, fresh, queries_of(fresh))
    meta = synced.metadata[synced.ids.index("birds/p20.png")]
    assert meta["folder"] == "birds" and meta["path"] == "birds/p20.png" and meta["size"] > 0
    # a second sync with records: touching a file (same bytes, new mtime) is not a change
    os.utime(root / "birds" / "p21.png", ns=(1, 1))
    summary = sync(tiny, tmp_path / "index", encoder=Encoder(fail_after=0))
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (0, 0, 0, 25)
    assert summary.version == 3  # the new mtime is recorded
    summary = sync(tiny, tmp_path / "index", encoder=Encoder(fail_after=0))
    assert not summary.published and summary.version == 3
    with pytest.raises(InputError, match="this index was built from .*photos, not from it"):
        sync(tiny, tmp_path / "index", source=str(tmp_path))


def test_interrupted_sync_keeps_the_old_index_and_resumes(tiny, tmp_path):
    root = tmp_path / "photos"
    make_folder(root)
    small = {**tiny, "chunk_rows": 4, "infer_batch_size": 2}
    sync(small, tmp_path / "index", source=str(root))
    before = SearchIndex(str(tmp_path / "index"))
    change_folder(root)
    with pytest.raises(KeyboardInterrupt):
        sync(small, tmp_path / "index", encoder=Encoder(fail_after=5))  # 2 of 4 chunks done
    kept = SearchIndex(str(tmp_path / "index"))
    assert kept.ids == before.ids and kept.version == before.version == 1
    assert [[h[0] for h in r] for r in kept.search(queries_of(before), 5)] == \
        [[h[0] for h in r] for r in before.search(queries_of(before), 5)]
    encoder = Encoder()
    summary = sync(small, tmp_path / "index", encoder=encoder)
    assert encoder.images == 13 - 8 and summary.reused == 8  # the two finished chunks were reused
    assert (summary.added, summary.changed, summary.removed) == (10, 3, 5)
    fresh, _ = fresh_build(tiny, root, tmp_path, "fresh")
    assert_same_index(SearchIndex(str(tmp_path / "index")), fresh, queries_of(fresh))
    assert not (tmp_path / ".index.sync").exists()


def test_sync_of_a_tsv_gallery(tiny, tmp_path):
    import base64
    def row(i, seed):
        rgb = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
        return f"img{i:02d}\t{base64.b64encode(cv2.imencode('.png', rgb)[1].tobytes()).decode()}\n"
    tsv = tmp_path / "gallery.tsv"
    tsv.write_text("".join(row(i, i) for i in range(20)))
    sync(tiny, tmp_path / "index", source=str(tsv))
    tsv.write_text("".join(row(i, 100 + i if i in (2, 3, 4) else i) for i in range(30) if i not in range(5, 10)))
    summary = sync(tiny, tmp_path / "index")
    assert (summary.added, summary.changed, summary.removed, summary.unchanged) == (10, 3, 5, 12)
    fresh, _ = fresh_build(tiny, tsv, tmp_path, "fresh")
    synced = SearchIndex(str(tmp_path / "index"))
    assert_same_index(synced, fresh, queries_of(fresh))
    assert synced.gallery_reader().image_bytes("img25") == base64.b64decode(row(25, 25).split("\t")[1])
    # user fields from --metadata: filterable, kept by later syncs, replaced by the next --metadata
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps({"id": f"img{i:02d}", "colour": "red" if i % 3 else "blue", "rank": i}) + "\n"
                            for i in (0, 1, 2, 3, 12, 25)))
    summary = sync(tiny, tmp_path / "index", metadata=str(meta), encoder=Encoder(fail_after=0))
    assert summary.published and summary.embedded == 0
    for _ in range(2):
        index = SearchIndex(str(tmp_path / "index"))
        hits = index.search(np.asarray(index.vectors()[:1]), 25, where={"colour": "red", "rank": {"gte": 2}})[0]
        assert sorted(h[0] for h in hits) == ["img02", "img25"]
        sync(tiny, tmp_path / "index", encoder=Encoder(fail_after=0))
    (tmp_path / "meta.tsv").write_text("img01\tno fields here\n")
    sync(tiny, tmp_path / "index", metadata=str(tmp_path / "meta.tsv"), encoder=Encoder(fail_after=0))
    with pytest.raises(ConfigError, match="unknown filter field 'colour'"):
        SearchIndex(str(tmp_path / "index")).search(np.asarray(fresh.vectors()[:1]), 3, where={"colour": "red"})


def test_sync_of_an_ivf_pq_index_stays_within_its_recall(tiny, tmp_path):
    root = tmp_path / "photos"
    make_folder(root)
    sync(tiny, tmp_path / "index", source=str(root), kind="ivf_pq")
    change_folder(root)
    summary = sync(tiny, tmp_path / "index")
    manifest = json.load(open(tmp_path / "index" / "manifest.json"))
    assert manifest["last_sync"]["action"] in ("kept", "retuned", "retrained") and summary.approximate
    assert min(manifest["recall_at_10"].values()) >= manifest["recall_bar"]
    fresh, _ = fresh_build(tiny, root, tmp_path, "fresh")
    assert SearchIndex(str(tmp_path / "index")).ids == fresh.ids


def milvus_ready():
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install -e \".[milvus]\")")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install -e \".[milvus]\")")


def test_milvus_sync_equals_a_fresh_build(tiny, tmp_path):
    milvus_ready()
    root = tmp_path / "photos"
    make_folder(root)
    uri = str(tmp_path / "milvus.db")
    sync(tiny, tmp_path / "index", source=str(root), backend="milvus", uri=uri)
    change_folder(root)
    summary = sync(tiny, tmp_path / "index")
    assert (summary.added, summary.changed, summary.removed) == (10, 3, 5)
    fresh, _ = fresh_build(tiny, root, tmp_path, "fresh", backend="milvus", uri=uri)
    synced = SearchIndex(str(tmp_path / "index"))
    assert synced.manifest["collection"] != fresh.manifest["collection"]
    assert_same_index(synced, fresh, queries_of(fresh))
    birds = [i for i in fresh.ids if i.startswith("birds/")]  # Milvus's filter expression against faiss's selector
    assert [[h[0] for h in r] for r in synced.search(queries_of(fresh), 5, where={"folder": "birds"})] == \
        [[h[0] for h in r] for r in fresh.search(queries_of(fresh), 5, where={"id": birds})]


def test_two_milvus_indexes_of_the_same_folder_name_keep_their_collections(tmp_path):
    milvus_ready()
    from test_index import gallery_npz, unit
    uri = str(tmp_path / "milvus.db")
    a = unit(np.random.default_rng(1).standard_normal((30, 16)))
    b = unit(np.random.default_rng(2).standard_normal((40, 16)))
    path_a, ids_a = gallery_npz(tmp_path / "a.npz", a, ids=[f"a{i}" for i in range(30)])
    path_b, ids_b = gallery_npz(tmp_path / "b.npz", b, ids=[f"b{i}" for i in range(40)])
    build_index(path_a, tmp_path / "one" / "index", backend="milvus", uri=uri, log=lambda _: None)
    build_index(path_b, tmp_path / "two" / "index", backend="milvus", uri=uri, log=lambda _: None)
    one, two = SearchIndex(str(tmp_path / "one" / "index")), SearchIndex(str(tmp_path / "two" / "index"))
    assert one.search(a[3], 1)[0][0][0] == "a3" and two.search(b[7], 1)[0][0][0] == "b7"
    # rebuilding one drops its own previous collection only
    old = one.manifest["collection"]
    build_index(path_a, tmp_path / "one" / "index", backend="milvus", uri=uri, log=lambda _: None)
    assert not two.store.client.has_collection(old) and two.search(b[7], 1)[0][0][0] == "b7"
    assert SearchIndex(str(tmp_path / "one" / "index")).version == 2
