"""A search index over embedded galleries: faiss (`flat` exact inner product, `hnsw`, `ivf_pq`) in a directory
with the ids, optional metadata and a manifest, or the same vectors in Milvus (`backends`).

INDEX_DIR/manifest.json: kind, backend, count, dimension, the provenance of the embeddings (model, source),
search parameters, for approximate kinds the recall@10 measured against exact search at build time and the bar
a sync keeps it above, and an integer "version" that every build and sync of INDEX_DIR increases (a service
polls it to pick up a new index).  Approximate kinds and Milvus also keep the exact vectors (vectors.npy) for
syncs, filtered searches of small subsets and duplicate detection.  A Milvus index owns one collection, named
after the folder plus a random suffix recorded in the manifest: two folders of the same name never share one.
INDEX_DIR is written under a temporary name and renamed: it is never half-written.
"""
import json
import logging
import os
import shutil
import time
import uuid

import numpy as np

from ..errors import ConfigError, InputError
from ..fileio import read_json, recover_folder, remove_stale_temps, swap_in_folder, temp_path_for, write_text_atomic
from .backends import FaissStore, open_store
from .filters import FieldTable
from .gallery_access import GalleryReader, describe_gallery, tsv_offsets
from .gallery_file import read_gallery

MANIFEST = "manifest.json"
FORMAT = "ernievil2-search-index"
FORMAT_VERSION = 2  # 2: versions, vectors.npy, Milvus keyed by id in a collection of the index's own
KINDS = ("flat", "hnsw", "ivf_pq")
RECALL_K = 10
TIE_MARGIN = 16  # extra candidates fetched so that results tied at the k-th score are ordered by id
EXACT_SUBSET_ROWS = 10000  # a filtered search of an approximate index scores subsets up to this size exactly
RECALL_SLACK = 0.01  # a sync keeps an approximate index's recall within this of what its build measured


def build_index(embeddings, index_dir, kind="flat", metadata=None, queries=None, min_recall=None,
                target_recall=0.95, backend="faiss", uri=None, gallery=None, sample=1000, seed=0, log=print):
    """Build INDEX_DIR from an embeddings .npz (see gallery_file.read_gallery); returns the manifest.

    metadata: a file of per-id metadata (`id \\t text` lines or JSONL with "id"); default the texts of an embed
    output of texts, or the first caption of each image in a pairs-TSV gallery.
    queries: an `embed` output of texts whose vectors also measure recall.  For approximate kinds the search
    parameter (hnsw efSearch, ivf_pq nprobe) is the smallest whose recall@10 reaches target_recall (or the
    largest tried); min_recall makes the build fail below it.  gallery: the folder or TSV of the images, for
    thumbnails (default: the images source an `embed` output records)."""
    if kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if backend == "milvus" and kind != "flat":
        raise ConfigError("the milvus backend stores exact (flat) indexes here; use --kind flat")
    ids, vectors, meta, provenance = read_gallery(embeddings)
    gallery = gallery or (provenance.get("source") if provenance.get("kind") == "images" else None)
    gallery = describe_gallery(gallery) if gallery else None
    offsets = None
    if gallery and gallery["kind"] == "tsv":
        offsets, captions = tsv_offsets(gallery["path"], ids)
        meta = meta or (captions if any(c is not None for c in captions) else None)  # a pairs TSV's captions
    if metadata:
        meta = read_metadata(metadata, ids)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "backend": backend,
                "embeddings": os.path.abspath(embeddings), "provenance": provenance, "gallery": gallery,
                "embedded_before_ns": os.stat(embeddings).st_mtime_ns}
    if backend == "milvus":
        manifest.update(uri=uri, collection=new_collection_name(index_dir))
    try:
        store = make_store(manifest, ids, vectors, meta, queries=queries, target_recall=target_recall,
                           sample=sample, seed=seed, log=log)
        worst = min(manifest.get("recall_at_10", {"": 1.0}).values())
        if min_recall is not None and worst < min_recall:
            raise InputError(f"{embeddings}: recall@10 of the {kind} index is {worst:.4f} "
                             f"({_describe(manifest['recall_at_10'])}), below --min-recall {min_recall}; "
                             f"nothing was written")
        old = publish(index_dir, store, ids, meta, manifest, offsets, vectors=vectors)
    except BaseException:
        if backend == "milvus" and "store" in locals():
            store.drop()  # the collection of an index that was never published
        raise
    _drop_replaced_collection(old, manifest)
    return manifest


def make_store(manifest, ids, vectors, metadata, queries=None, target_recall=0.95, sample=1000, seed=0,
               log=print, trained=None):
    """The store of `manifest`'s kind and backend over these vectors (rows in the order of ids), with the
    manifest's count, dim, build_seconds and, for approximate kinds, tuned search parameters and their recall
    (filled in here).  trained: for ivf_pq, a store whose trained quantizers are reused (sync)."""
    kind = manifest["kind"]
    start = time.perf_counter()
    if manifest["backend"] == "faiss":
        store = (trained.refilled(vectors) if trained is not None
                 else FaissStore.build(kind, vectors, seed=seed))
    else:
        store = open_store("milvus", uri=manifest["uri"], collection=manifest["collection"], dim=vectors.shape[1],
                           ids=ids, create_with=(ids, vectors, metadata))
    manifest.update(count=len(ids), dim=int(vectors.shape[1]), build_seconds=round(time.perf_counter() - start, 3),
                    version=manifest.get("version", 0))
    if kind != "flat":
        query_sets = _query_sets(vectors, queries, sample, seed)
        manifest["search_params"], manifest["recall_at_10"] = _tune(store, vectors, query_sets, target_recall, log)
        store.set_params(manifest["search_params"])
        manifest["target_recall"] = target_recall
        manifest["recall_bar"] = round(min(target_recall, min(manifest["recall_at_10"].values())) - RECALL_SLACK, 4)
        manifest["trained_count"] = manifest.get("trained_count", len(ids)) if trained is not None else len(ids)
    return store


def measure_recall(store, vectors, seed=0, sample=1000):
    """recall@10 of `store` at its current parameters on held-in gallery queries (the build's query sample)."""
    exact = FaissStore.build("flat", vectors)
    query_sets = _query_sets(vectors, None, sample, seed)
    return {name: _recall(_top(store, q, own), _top(exact, q, own)) for name, (q, own) in query_sets.items()}


def new_collection_name(index_dir):
    """The folder's name plus a random suffix: each index owns its collection (two folders of the same name
    in different places never drop each other's)."""
    base = "".join(c if c.isalnum() else "_" for c in os.path.basename(os.path.abspath(index_dir)))
    return f"ernievil2_{base[:200]}_{uuid.uuid4().hex[:12]}"


def _drop_replaced_collection(old_manifest, manifest):
    """After a rebuild is published, the collection of the index it replaced (never the new one's)."""
    if (old_manifest and old_manifest.get("backend") == "milvus"
            and old_manifest.get("collection") != manifest.get("collection")):
        try:
            open_store("milvus", uri=old_manifest["uri"], collection=old_manifest["collection"],
                       dim=old_manifest["dim"]).drop()
        except Exception as e:  # noqa: BLE001 - the new index is published; an old collection is only garbage
            logging.getLogger(__name__).warning("could not drop the replaced collection %s: %s",
                                                old_manifest.get("collection"), e)


class SearchIndex:
    """A built index: `search(vectors [q, D], k)` -> per query a list of (id, score, metadata), best first."""

    def __init__(self, index_dir):
        self.dir = index_dir
        self.manifest = read_manifest(index_dir)
        with open(os.path.join(index_dir, "ids.json"), encoding="utf-8") as f:
            self.ids = json.load(f)
        self.metadata = _read_jsonl(os.path.join(index_dir, "metadata.jsonl"))
        if self.manifest["backend"] == "faiss":
            self.store = FaissStore.load(os.path.join(index_dir, "index.faiss"), self.manifest)
        else:
            if "collection" not in self.manifest or self.manifest.get("format_version", 1) < FORMAT_VERSION:
                raise InputError(f"{index_dir}: a Milvus index of an earlier version (shared collection names); "
                                 f"build it again")
            self.store = open_store("milvus", uri=self.manifest["uri"], collection=self.manifest["collection"],
                                    dim=self.manifest["dim"], ids=self.ids)
        self.store.set_params(self.manifest.get("search_params") or {})
        self._fields = self._vectors = None

    @property
    def version(self):
        return int(self.manifest.get("version", 0))

    @property
    def fields(self):
        """The FieldTable of this index's metadata (for filters)."""
        if self._fields is None:
            self._fields = FieldTable(self.ids, self.metadata)
        return self._fields

    def vectors(self):
        """The exact vectors [N, D] in row order (vectors.npy, memory-mapped; a flat index's own storage)."""
        if self._vectors is None:
            path = os.path.join(self.dir, "vectors.npy")
            if os.path.isfile(path):
                self._vectors = np.load(path, mmap_mode="r")
            elif isinstance(self.store, FaissStore) and self.store.kind == "flat":
                self._vectors = self.store.flat_vectors()
            else:
                raise InputError(f"{self.dir}: this index keeps no exact vectors (built by an earlier version); "
                                 f"build it again")
        return self._vectors

    def gallery_reader(self):
        """A GalleryReader for thumbnails, or None when the index records no gallery."""
        gallery = self.manifest.get("gallery")
        if not gallery:
            return None
        offsets_file = os.path.join(self.dir, "gallery_offsets.npy")
        offsets = np.load(offsets_file) if os.path.isfile(offsets_file) else None
        return GalleryReader(gallery, self.ids, offsets)

    @property
    def dim(self):
        return self.manifest["dim"]

    @property
    def count(self):
        return self.manifest["count"]

    def search(self, vectors, k=10, where=None):
        """Per query the top k (id, score, metadata), best first, ties by ascending id.  where: a filter (see
        search.filters): the exact top k of the matching rows (fewer when fewer match) for flat and Milvus; for
        approximate kinds an over-fetch of the index, checked to hold k matches, else (and for subsets of at most
        EXACT_SUBSET_ROWS) exact scoring of the subset."""
        vectors = np.ascontiguousarray(np.atleast_2d(vectors), np.float32)
        if vectors.shape[1] != self.dim:
            raise ConfigError(f"{self.dir}: the query embedding has dimension {vectors.shape[1]}, the index "
                              f"{self.dim} (built from {self._built_with()}); search with the model that built it")
        if not 1 <= k <= self.count:
            raise ConfigError(f"k must be between 1 and the index size {self.count}, got {k}")
        if where:
            scores, rows = self._filtered(vectors, k, self.fields.check(where))
        else:
            scores, rows = self.store.search(vectors, min(self.count, k + TIE_MARGIN))
        return self._hits(scores, rows, k)

    def _filtered(self, vectors, k, where):
        allowed = self.fields.rows(where)
        fetch = min(len(allowed), k + TIE_MARGIN)
        if fetch == 0:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        if self.manifest["backend"] == "milvus":
            return self.store.search(vectors, fetch, self.fields.milvus_expression(where))
        if self.store.kind == "flat":
            return self.store.search(vectors, fetch, rows=allowed)
        if len(allowed) > EXACT_SUBSET_ROWS:
            # Over-fetch in proportion to how rare matches are; accept only when every query found `fetch`.
            wide = min(self.count, fetch * 2 * -(-self.count // len(allowed)))
            scores, rows = self.store.search(vectors, wide)
            mask = np.isin(rows, allowed)
            if (mask.sum(axis=1) >= fetch).all():
                order = np.argsort(~mask, axis=1, kind="stable")[:, :fetch]  # matches first, score order kept
                return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
            logger.info("filtered search: the over-fetch held too few matches; scoring the subset exactly")
        subset = np.asarray(self.vectors()[allowed], np.float32)
        scores = vectors @ subset.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :fetch]
        return np.take_along_axis(scores, top, 1), allowed[top]

    def _hits(self, scores, rows, k):
        out = []
        for score_row, index_row in zip(scores, rows):
            hits = sorted(((float(s), self.ids[r], r) for s, r in zip(score_row, index_row) if r >= 0),
                          key=lambda hit: (-hit[0], hit[1]))[:k]  # ties: ascending id
            out.append([(hit_id, score, self.metadata[r] if self.metadata else None)
                        for score, hit_id, r in hits])
        return out

    def _built_with(self):
        prov = self.manifest.get("provenance") or {}
        return prov.get("weights") or prov.get("inference_model_dir") or prov.get("source") or "an unknown model"


logger = logging.getLogger(__name__)


def read_manifest(index_dir):
    recover_folder(index_dir)  # a build that crashed between the two renames of its swap left the old index aside
    path = os.path.join(index_dir, MANIFEST)
    if not os.path.isfile(path):
        raise InputError(f"{index_dir}: not a search index ({MANIFEST} missing); build one with "
                         f"python -m ernievil2 index build EMB.npz {index_dir}")
    manifest = read_json(path, InputError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            manifest.get("format_version", 0) > FORMAT_VERSION:
        raise InputError(f"{path}: not a search index manifest this version reads")
    return manifest


def read_metadata(path, ids):
    """Per-id metadata from `id \\t text` lines or JSONL objects with an "id"; returns a list aligned with ids
    (None where an id has none); an id not in the gallery is an error naming the line."""
    from ..data.tsv import text_lines
    if not os.path.isfile(path):
        raise InputError(f"{path}: metadata file not found")
    known, by_id = set(ids), {}
    for line_no, text, problem in text_lines(path):
        if problem:
            raise InputError(f"{path}:{line_no}: {problem}")
        if path.endswith((".jsonl", ".json")):
            try:
                record = json.loads(text)
                key, value = str(record.pop("id")), record
            except (ValueError, KeyError, AttributeError, TypeError):
                raise InputError(f"{path}:{line_no}: expected a JSON object with an \"id\"") from None
        else:
            key, _, value = text.partition("\t")
        if key not in known:
            raise InputError(f"{path}:{line_no}: id {key!r} is not in the gallery")
        by_id[key] = value
    return [by_id.get(i) for i in ids]


def _query_sets(vectors, queries, sample, seed):
    """Recall queries: a sample of gallery vectors (each excluding itself from both result lists), and the
    text queries of an `embed` output when given."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), size=min(sample, len(vectors)), replace=False)
    sets = {"gallery": (vectors[rows], rows)}
    if queries:
        _, query_vectors, _, _ = read_gallery(queries)
        if query_vectors.shape[1] != vectors.shape[1]:
            raise ConfigError(f"{queries}: queries of dimension {query_vectors.shape[1]}, gallery "
                              f"{vectors.shape[1]}: embed both with the same model")
        sets["text_queries"] = (query_vectors[:sample], None)
    return sets


def _tune(store, vectors, query_sets, target, log):
    """The smallest search parameter reaching `target` recall@10 on every query set (or the largest tried)."""
    exact = FaissStore.build("flat", vectors)
    truth = {name: _top(exact, q, own) for name, (q, own) in query_sets.items()}
    for params in store.parameter_ladder():
        store.set_params(params)
        recall = {name: _recall(_top(store, q, own), truth[name]) for name, (q, own) in query_sets.items()}
        log(f"  {_describe(params)}: recall@{RECALL_K} {_describe(recall)}")
        if min(recall.values()) >= target:
            break
    return params, recall


def _top(store, queries, own_rows):
    """Top RECALL_K rows per query, fetched as SearchIndex.search fetches them (k + TIE_MARGIN candidates, so the
    recall recorded is the recall users get); a gallery query's own row is left out."""
    _, rows = store.search(queries, RECALL_K + TIE_MARGIN + 1)
    if own_rows is None:
        return rows[:, :RECALL_K]
    return np.array([[r for r in row if r != own][:RECALL_K] for row, own in zip(rows, own_rows)])


def _recall(found, truth):
    return round(float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])), 4)


def _describe(mapping):
    return ", ".join(f"{k} {v}" for k, v in mapping.items())


def publish(index_dir, store, ids, metadata, manifest, offsets=None, vectors=None, records=None):
    """Stage everything in a sibling directory, then swap it in: readers see the old index or the new one.
    The manifest's version becomes the replaced index's + 1.  Returns the replaced index's manifest (or None).
    vectors are kept (vectors.npy) except for flat faiss indexes, whose index file holds them exactly; records
    are sync's per-item identities (sync.py)."""
    index_dir = os.path.abspath(index_dir)
    recover_folder(index_dir)  # an earlier build that crashed between the two renames of its swap
    if os.path.exists(index_dir) and os.listdir(index_dir) and not os.path.isfile(os.path.join(index_dir, MANIFEST)):
        raise ConfigError(f"{index_dir}: exists and is not a search index; refusing to replace it")
    try:
        previous = read_manifest(index_dir) if os.path.exists(index_dir) else None
    except InputError:
        previous = None
    manifest["version"] = int((previous or {}).get("version", 0)) + 1
    remove_stale_temps(index_dir)
    stage = temp_path_for(index_dir, ".partial")
    os.makedirs(stage)
    try:
        store.save(stage)
        if vectors is not None and not (manifest["backend"] == "faiss" and manifest["kind"] == "flat"):
            np.save(os.path.join(stage, "vectors.npy"), np.ascontiguousarray(vectors, np.float32))
        if records is not None:
            write_text_atomic(os.path.join(stage, "records.jsonl"),
                              "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        write_text_atomic(os.path.join(stage, "ids.json"), json.dumps(ids, ensure_ascii=False))
        if metadata is not None:
            write_text_atomic(os.path.join(stage, "metadata.jsonl"),
                              "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metadata))
        if offsets is not None:
            np.save(os.path.join(stage, "gallery_offsets.npy"), offsets)
        write_text_atomic(os.path.join(stage, MANIFEST), json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        swap_in_folder(stage, index_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return previous


def _read_jsonl(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]
