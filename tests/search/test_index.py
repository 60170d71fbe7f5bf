"""Search indexes: exact top-k equals brute force (ties by id), approximate kinds measure and record their recall,
builds are atomic, mismatches are clear errors; run_infer sidecars, galleries and Milvus Lite."""
import base64
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO
from ernievil2.errors import ConfigError, EmbeddingFileError, InputError
from ernievil2.fileio import NpzWriter
from ernievil2.search.index import SearchIndex, build_index

pytest.importorskip("faiss", reason="faiss-cpu is not installed (pip install -e \".[search]\")")


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery_npz(path, vectors, ids=None, texts=None, provenance=None):
    ids = ids or [f"id{i:05d}" for i in range(len(vectors))]
    writer = NpzWriter(str(path), matrices=("embeddings",), strings=("ids",) + (("texts",) if texts else ()))
    writer.add(ids=ids, embeddings=vectors, **({"texts": texts} if texts else {}))
    writer.finish(extra={"provenance": np.array(json.dumps(provenance or {"kind": "images", "embed_dim":
                                                                                int(vectors.shape[1])}))})
    return str(path), ids


def brute_force(vectors, ids, queries, k):
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    out = []
    for row in scores:
        order = sorted(range(len(ids)), key=lambda j: (-np.float32(row[j]), ids[j]))[:k]
        out.append([ids[j] for j in order])
    return out


def clustered(n, d, clusters=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    return unit(centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, d)))


def test_flat_top_k_equals_brute_force_with_ties_by_id(tmp_path):
    vectors = unit(np.random.default_rng(1).standard_normal((500, 48)))
    vectors[[7, 300, 123]] = vectors[42]  # four identical vectors: tied scores
    path, ids = gallery_npz(tmp_path / "g.npz", vectors, ids=[f"{(i * 7919) % 500:05d}" for i in range(500)])
    build_index(path, tmp_path / "index", log=lambda _: None)
    index = SearchIndex(str(tmp_path / "index"))
    queries = np.concatenate([vectors[[42, 5]], unit(np.random.default_rng(2).standard_normal((20, 48)))])
    got = index.search(queries, 10)
    assert [[hit[0] for hit in row] for row in got] == brute_force(vectors, ids, queries, 10)
    # a few queries at a time take the matrix-product path instead of faiss's; the same results
    alone = [index.search(query[None], 10)[0] for query in queries]
    assert [[hit[0] for hit in row] for row in alone] == brute_force(vectors, ids, queries, 10)
    np.testing.assert_allclose([[h[1] for h in row] for row in alone], [[h[1] for h in row] for row in got],
                               atol=1e-6)
    tied = [hit[0] for hit in got[0][:4]]
    assert tied == sorted(ids[i] for i in (7, 42, 123, 300))  # equal scores: ascending id
    np.testing.assert_allclose([h[1] for h in got[1]], np.sort(vectors @ vectors[5])[::-1][:10], atol=1e-6)


@pytest.mark.parametrize("kind", ["hnsw", "ivf_pq"])
def test_approximate_kinds_measure_recall_and_record_it(tmp_path, kind):
    vectors = clustered(4000, 64)
    path, ids = gallery_npz(tmp_path / "g.npz", vectors)
    queries, _ = gallery_npz(tmp_path / "q.npz", clustered(200, 64, seed=9), ids=[f"q{i}" for i in range(200)])
    lines = []
    manifest = build_index(path, tmp_path / kind, kind=kind, queries=queries, log=lines.append)
    recall = manifest["recall_at_10"]
    assert set(recall) == {"gallery", "text_queries"} and lines
    assert json.load(open(tmp_path / kind / "manifest.json"))["recall_at_10"] == recall
    # the recorded recall is what searching the saved index gives
    index = SearchIndex(str(tmp_path / kind))
    q = clustered(200, 64, seed=9)
    truth = brute_force(vectors, ids, q, 10)
    found = [[h[0] for h in row] for row in index.search(q, 10)]
    measured = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert measured == pytest.approx(recall["text_queries"], abs=0.02)
    if kind == "hnsw":
        assert min(recall.values()) >= 0.95  # efSearch is raised until the target is reached


def test_min_recall_failure_writes_nothing(tmp_path):
    path, _ = gallery_npz(tmp_path / "g.npz", clustered(3000, 64))
    with pytest.raises(InputError, match="recall@10 of the ivf_pq index is .* below --min-recall 1.01"):
        build_index(path, tmp_path / "index", kind="ivf_pq", min_recall=1.01, log=lambda _: None)
    assert not (tmp_path / "index").exists() and os.listdir(tmp_path) == ["g.npz"]


def test_mismatches_and_missing_pieces_are_clear_errors(tmp_path):
    path, _ = gallery_npz(tmp_path / "g.npz", unit(np.random.default_rng(3).standard_normal((50, 32))),
                          provenance={"kind": "images", "weights": "/models/base.pdparams"})
    build_index(path, tmp_path / "index", log=lambda _: None)
    index = SearchIndex(str(tmp_path / "index"))
    with pytest.raises(ConfigError, match=r"query embedding has dimension 768, the index 32 \(built from "
                                          r"/models/base.pdparams\)"):
        index.search(np.ones((1, 768), np.float32), 5)
    with pytest.raises(ConfigError, match="k must be between 1 and the index size 50"):
        index.search(np.ones((1, 32), np.float32), 51)
    with pytest.raises(InputError, match="not a search index"):
        SearchIndex(str(tmp_path))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not a search index; refusing to replace it"):
        build_index(path, tmp_path / "junk", log=lambda _: None)
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(EmbeddingFileError, match="neither an embed output"):
        build_index(str(bad), tmp_path / "i2", log=lambda _: None)
    with pytest.raises(ConfigError, match="--kind must be one of flat, hnsw, ivf_pq"):
        build_index(path, tmp_path / "i3", kind="lsh", log=lambda _: None)


def test_rebuilding_replaces_the_index_whole(tmp_path):
    path, _ = gallery_npz(tmp_path / "g.npz", unit(np.random.default_rng(4).standard_normal((30, 16))))
    build_index(path, tmp_path / "index", log=lambda _: None)
    path2, _ = gallery_npz(tmp_path / "g2.npz", unit(np.random.default_rng(5).standard_normal((40, 16))),
                           ids=[f"new{i}" for i in range(40)])
    build_index(path2, tmp_path / "index", log=lambda _: None)
    index = SearchIndex(str(tmp_path / "index"))
    assert index.count == 40 and index.ids[0] == "new0"
    assert sorted(os.listdir(tmp_path)) == ["g.npz", "g2.npz", "index"]  # no staging leftovers


def jpeg_b64(seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", rgb)[1].tobytes()).decode()


def test_run_infer_sidecar_with_a_pairs_tsv_gallery(tmp_path):
    from ernievil2.eval.sidecar import save_sidecar
    rng = np.random.default_rng(6)
    image_ids = ["a", "b", "a", "c", "b"]  # captions of the same image repeat its embedding
    per_image = {i: unit(rng.standard_normal((1, 16)))[0] for i in "abc"}
    text = unit(rng.standard_normal((5, 16)))
    side = save_sidecar(str(tmp_path / "out.npz"), text, np.stack([per_image[i] for i in image_ids]), image_ids)
    images = {i: jpeg_b64(k) for k, i in enumerate("abc")}
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"caption {n} of {i}\t{i}\t{images[i]}\n" for n, i in enumerate(image_ids)))
    build_index(side, tmp_path / "index", gallery=str(tsv), log=lambda _: None)
    index = SearchIndex(str(tmp_path / "index"))
    assert index.ids == ["a", "b", "c"] and index.metadata == ["caption 0 of a", "caption 1 of b", "caption 3 of c"]
    assert index.search(per_image["c"], 1)[0][0][:1] == ("c",)
    reader = index.gallery_reader()
    assert reader.image_bytes("b") == base64.b64decode(images["b"])
    assert reader.image_bytes("zzz") is None


def test_folder_gallery_never_serves_outside_its_root(tmp_path):
    from ernievil2.search.gallery_access import GalleryReader
    root = tmp_path / "photos"
    root.mkdir()
    (root / "a.jpg").write_bytes(b"inside")
    (tmp_path / "secret.txt").write_text("outside")
    reader = GalleryReader({"kind": "folder", "path": str(root)}, ["a.jpg", "../secret.txt"])
    assert reader.image_bytes("a.jpg") == b"inside"
    assert reader.image_bytes("../secret.txt") is None  # even an indexed id may not leave the gallery
    assert reader.image_bytes("../photos/a.jpg") is None  # not an indexed id


def test_metadata_file(tmp_path):
    path, ids = gallery_npz(tmp_path / "g.npz", unit(np.random.default_rng(7).standard_normal((3, 8))))
    meta = tmp_path / "meta.tsv"
    meta.write_text(f"{ids[1]}\tcats/1.jpg\n{ids[0]}\tcats/0.jpg\n", encoding="utf-8")
    build_index(path, tmp_path / "index", metadata=str(meta), log=lambda _: None)
    assert SearchIndex(str(tmp_path / "index")).metadata == ["cats/0.jpg", "cats/1.jpg", None]
    meta.write_text("nope\tx\n")
    with pytest.raises(InputError, match=f"{meta}:1: id 'nope' is not in the gallery"):
        build_index(path, tmp_path / "index2", metadata=str(meta), log=lambda _: None)


def test_milvus_lite_gives_the_same_results_as_faiss_flat(tmp_path):
    pytest.importorskip("pymilvus", reason="pymilvus is not installed (pip install -e \".[milvus]\")")
    pytest.importorskip("milvus_lite", reason="milvus-lite is not installed (pip install -e \".[milvus]\")")
    vectors = unit(np.random.default_rng(8).standard_normal((300, 32)))
    path, ids = gallery_npz(tmp_path / "g.npz", vectors)
    build_index(path, tmp_path / "faiss", log=lambda _: None)
    uri = str(tmp_path / "milvus.db")
    manifest = build_index(path, tmp_path / "milvus", backend="milvus", uri=uri, log=lambda _: None)
    assert manifest["backend"] == "milvus" and manifest["uri"] == uri
    queries = unit(np.random.default_rng(9).standard_normal((10, 32)))
    exact, milvus = SearchIndex(str(tmp_path / "faiss")), SearchIndex(str(tmp_path / "milvus"))
    for a, b in zip(exact.search(queries, 10), milvus.search(queries, 10)):
        assert [h[0] for h in a] == [h[0] for h in b]
        np.testing.assert_allclose([h[1] for h in a], [h[1] for h in b], atol=1e-5)
    with pytest.raises(ConfigError, match="needs --uri"):
        build_index(path, tmp_path / "m2", backend="milvus", log=lambda _: None)


def test_search_command_end_to_end(tiny, tmp_path):
    from conftest import make_tiny_model
    from ernievil2.infer.engines import EagerEncoder
    from ernievil2.infer.gallery import load_embed_config, run_embed
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        rgb = np.random.default_rng(i).integers(0, 255, (30, 40, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"p{i}.png"), rgb)
    cfg = load_embed_config(None, list({**tiny, "images": str(folder), "output_file": str(tmp_path / "g.npz")}.items()))
    run_embed(cfg, encoder=EagerEncoder(make_tiny_model(seed=5)))
    build_index(str(tmp_path / "g.npz"), tmp_path / "index", log=lambda _: None)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "test_file": "unused"}, allow_unicode=True), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))

    def search(*args):
        return subprocess.run([sys.executable, "-m", "ernievil2", "search", str(config), str(tmp_path / "index"),
                               *args, "-o", "engine=eager"], cwd=REPO, capture_output=True, text=True, env=env,
                              timeout=300)
    run = search("--image", str(folder / "p3.png"), "-k", "3", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    hits = json.loads(run.stdout)
    assert [h["id"] for h in hits][0] == "p3.png" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    run = search("--text", "红色的圆形", "-k", "2")
    assert run.returncode == 0 and len(run.stdout.strip().splitlines()) == 2
    run = search("--text", "x", "-k", "99")
    assert run.returncode == 2 and "-k must be between 1 and the index size 6" in run.stderr
