"""Where an index's vectors live: faiss (in the index directory; optional extra `search`) or Milvus through
`pymilvus.MilvusClient` (optional extra `milvus`: a local file URI runs Milvus Lite, `http://host:19530` a
cluster).  Both answer `search(queries [q, D], k) -> (scores [q, k], rows [q, k])`, rows indexing the ids."""
import logging
import math
import os

import numpy as np

from ..errors import ConfigError, RuntimeSupportError

HNSW_M, HNSW_EF_CONSTRUCTION = 32, 80
LADDERS = {"hnsw": [{"efSearch": ef} for ef in (16, 32, 64, 128, 256, 512, 1024)]}
INSERT_BATCH = 2000
FLAT_BLAS_QUERIES = 16  # up to this many queries, exact search is one matrix product over all cores


def _faiss():
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its instruction-set notes are not news
    try:
        import faiss
    except ImportError:
        raise RuntimeSupportError("faiss is not installed: pip install -e \".[search]\" (faiss-cpu)") from None
    return faiss


class FaissStore:
    def __init__(self, index, kind):
        self.index, self.kind = index, kind

    @classmethod
    def build(cls, kind, vectors, seed=0):
        faiss = _faiss()
        n, d = vectors.shape
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        elif kind == "ivf_pq":
            index = _ivf_pq(faiss, vectors, seed)
        else:
            raise ConfigError(f"unknown index kind {kind!r}")
        index.add(vectors)
        return cls(index, kind)

    def refilled(self, vectors):
        """A trained ivf_pq index holding `vectors` instead of its own (its quantizers kept: a sync does not
        retrain); other kinds are built anew."""
        if self.kind != "ivf_pq":
            return FaissStore.build(self.kind, vectors)
        index = _faiss().clone_index(self.index)
        index.reset()
        index.add(np.ascontiguousarray(vectors, np.float32))
        return FaissStore(index, self.kind)

    @classmethod
    def load(cls, path, manifest):
        if not os.path.isfile(path):
            raise ConfigError(f"{path}: the index file is missing; build the index again")
        return cls(_faiss().read_index(path), manifest["kind"])

    def save(self, directory):
        _faiss().write_index(self.index, os.path.join(directory, "index.faiss"))

    def search(self, queries, k, rows=None):
        """(scores [q, k], rows [q, k]); `rows` (flat only): search just these rows (sorted), -1 filling the
        places when fewer match: a few queries as one masked matrix product, more through a faiss ID selector."""
        queries = np.ascontiguousarray(queries, np.float32)
        if rows is not None:
            if self.kind != "flat":
                raise ConfigError("an ID selector search needs an exact (flat) index")
            if len(queries) <= FLAT_BLAS_QUERIES:
                return self._flat_search(queries, k, rows)
            faiss = _faiss()
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(rows, np.int64))
            return self.index.search(queries, k, params=faiss.SearchParameters(sel=selector))
        if self.kind == "flat" and len(queries) <= FLAT_BLAS_QUERIES:
            return self._flat_search(queries, k)
        return self.index.search(queries, k)

    def flat_vectors(self):
        """The stored vectors [N, D] of a flat index (a view, no copy)."""
        n = self.index.ntotal
        return _faiss().rev_swig_ptr(self.index.get_xb(), n * self.index.d).reshape(n, self.index.d)

    def _flat_search(self, queries, k, rows=None):
        """Exact search of a few queries as one matrix product over the stored vectors: faiss splits its exact
        search over queries, so a single query ran on one core; the product uses every core (README: "Measured
        results").  Same results; ties at the k-th score are ordered by the caller.  rows: only these compete
        (a small subset is gathered, a large one masked)."""
        n, vectors = self.index.ntotal, self.flat_vectors()
        if rows is not None and len(rows) * 8 <= n:
            top_scores, top = _top_k(queries @ vectors[rows].T, k)
            return top_scores, np.asarray(rows, np.int64)[top]
        scores = queries @ vectors.T  # [q, n]
        if rows is not None:
            masked = np.full(n, -np.inf, np.float32)
            masked[rows] = 0.0
            scores += masked
            k = min(k, len(rows))
        top_scores, top = _top_k(scores, k)
        return top_scores, top.astype(np.int64)

    def parameter_ladder(self):
        if self.kind == "ivf_pq":
            nlist = _faiss().downcast_index(self.index.base_index).nlist
            probes = sorted({min(2 ** i, nlist) for i in range(2, int(math.log2(nlist)) + 2)} | {nlist}) \
                if nlist < 4 else sorted({min(2 ** i, nlist) for i in range(2, int(math.log2(nlist)) + 2)})
            return [{"nprobe": p, "k_factor": k} for p in probes for k in (4, 16, 64)]
        return LADDERS.get(self.kind, [{}])

    def set_params(self, params):
        if "efSearch" in params:
            self.index.hnsw.efSearch = int(params["efSearch"])
        if "nprobe" in params:
            _faiss().downcast_index(self.index.base_index).nprobe = int(params["nprobe"])
        if "k_factor" in params:
            self.index.k_factor = float(params["k_factor"])


def _top_k(scores, k):
    """(scores, columns) of the k best of each row of scores [q, n], best first."""
    n = scores.shape[1]
    k = min(k, n)
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(scores), 1))
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    return np.take_along_axis(top_scores, order, axis=1), np.take_along_axis(top, order, axis=1)


def _ivf_pq(faiss, vectors, seed):
    """IVF with about 4 sqrt(N) lists (at least 39 training points each) and 8-dimensional PQ sub-vectors, whose
    k_factor x k best candidates are re-ranked with 8-bit scalar-quantised vectors (a quarter of the memory of
    flat): PQ distances alone are too coarse for embeddings that sit close together (recall@10 of 0.4 measured
    on clustered data).  Small galleries get fewer bits per code so that every codebook can be trained."""
    n, d = vectors.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39, 65536))
    m = next(m for m in (d // 8, d // 4, d // 2, d, 1) if m and d % m == 0)
    nbits = max(1, min(8, int(math.log2(max(2, n // 39)))))
    ivf = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.pq.cp.seed = seed
    index = faiss.IndexRefine(ivf, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit,
                                                              faiss.METRIC_INNER_PRODUCT))
    index.train(vectors)
    index.own_fields = True  # the refine index owns both parts (kept alive with it)
    ivf.this.disown()
    return index


class MilvusStore:
    """One Milvus collection: primary key `id` (the item's id), a FLAT inner-product index, and the item's
    filterable metadata as dynamic fields.  Keyed by id so that a sync upserts and deletes items in place."""

    ID_LENGTH = 4096

    def __init__(self, uri, collection, dim, ids=()):
        try:
            from pymilvus import MilvusClient
        except ImportError:
            raise RuntimeSupportError("pymilvus is not installed: pip install -e \".[milvus]\"") from None
        self.collection, self.dim = collection, dim
        self.row_of = {item_id: row for row, item_id in enumerate(ids)}
        # Milvus Lite's embedded server logs a harmless "Method not implemented" (AllocTimestamp) as an error.
        logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        try:
            self.client = MilvusClient(uri)
        except Exception as e:  # noqa: BLE001 - connection and URI errors come in many classes
            raise ConfigError(f"--uri {uri}: cannot connect to Milvus ({type(e).__name__}: {e})") from None

    def create(self, ids, vectors, fields=None):
        """A new collection holding these items (the collection name is the index's own: see index.py)."""
        from pymilvus import DataType, MilvusClient
        if self.client.has_collection(self.collection):
            raise ConfigError(f"Milvus already has a collection {self.collection!r}; an index never reuses another "
                              f"index's collection")
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=self.ID_LENGTH)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="vector", index_type="FLAT", metric_type="IP")
        self.client.create_collection(self.collection, schema=schema, index_params=index_params)
        self.upsert(ids, vectors, fields, insert=True)
        self.client.load_collection(self.collection)

    def upsert(self, ids, vectors, fields=None, insert=False):
        write = self.client.insert if insert else self.client.upsert
        for start in range(0, len(ids), INSERT_BATCH):
            rows = []
            for i in range(start, min(len(ids), start + INSERT_BATCH)):
                if len(ids[i].encode("utf-8")) > self.ID_LENGTH:
                    raise ConfigError(f"id {ids[i][:60]!r}...: Milvus ids are limited to {self.ID_LENGTH} bytes")
                extra = fields[i] if fields is not None and isinstance(fields[i], dict) else {}
                rows.append({**{k: v for k, v in extra.items() if k not in ("id", "vector")},
                             "id": ids[i], "vector": vectors[i].tolist()})
            if rows:
                write(self.collection, rows)
        self.client.flush(self.collection)

    def delete(self, ids):
        for start in range(0, len(ids), INSERT_BATCH):
            self.client.delete(self.collection, ids=list(ids[start:start + INSERT_BATCH]))
        self.client.flush(self.collection)

    def drop(self):
        if self.client.has_collection(self.collection):
            self.client.drop_collection(self.collection)

    def save(self, directory):
        pass  # the vectors live in Milvus; the directory keeps ids, metadata and the manifest

    def search(self, queries, k, expression=""):
        """(scores [q, k], rows [q, k]); a hit whose id this index does not list (a sync in progress) is left
        out (row -1)."""
        if not self.client.has_collection(self.collection):
            raise ConfigError(f"Milvus has no collection {self.collection!r}; build the index again")
        results = self.client.search(self.collection, data=[q.tolist() for q in queries], limit=k,
                                     filter=expression or "", search_params={"metric_type": "IP"},
                                     output_fields=["id"])
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        for i, hits in enumerate(results):
            for j, hit in enumerate(hits[:k]):
                scores[i, j], rows[i, j] = hit["distance"], self.row_of.get(hit["id"], -1)
        return scores, rows

    def parameter_ladder(self):
        return [{}]

    def set_params(self, params):
        pass


def open_store(backend, uri, collection, dim, ids=(), create_with=None):
    """The Milvus store of an index (created from (ids, vectors, fields) when given)."""
    if backend != "milvus":
        raise ConfigError(f"--backend must be faiss or milvus, got {backend!r}")
    if not uri:
        raise ConfigError("--backend milvus needs --uri (a local file for Milvus Lite, or http://host:19530)")
    store = MilvusStore(uri, collection, dim, ids)
    if create_with is not None:
        store.create(*create_with)
    return store
