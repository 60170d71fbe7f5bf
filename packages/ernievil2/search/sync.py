"""`index sync`: bring an index up to date with the image folder or `image_id \\t base64` TSV it was built from.

Each indexed item has a record (INDEX_DIR/records.jsonl): id, size, mtime_ns (folders) and a blake2b hash of its
bytes (folders: the file; TSV: the base64 field), plus the user's metadata fields.  An item is unchanged when its
size and mtime are the recorded ones, or, when they differ (or for TSV rows), when its hash is.  An index built by
`index build` from an embed output has no records yet: its files last modified before the embeddings were
written are adopted as they are (hashed now), the others are re-embedded.

New and changed images are embedded by `embed` itself (infer.gallery.run_embed: streaming, workers, bad-row
policy, resumable chunks) from a work folder beside the index (`.NAME.sync/`: links to the folder's files, or a
TSV of the rows); the vectors of unchanged items are the index's own.  The new index is published with the same
folder swap as a build, so an interrupted sync leaves the previous index in place, and the next sync reuses the
chunks already embedded.  Rows come in the source's order and flat indexes are rebuilt from the vectors, so the
result is what a fresh build gives.  Approximate kinds: hnsw is rebuilt (its graph cannot delete); ivf_pq keeps
its trained quantizers while its recall on held-in queries stays above the bar recorded at build, is re-tuned
when it falls below and retrained when re-tuning is not enough, or when the collection has halved or doubled
since training.  Milvus indexes get upserts and deletes in their own collection.
"""
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from ..data.sources import FolderImages, TsvImages, image_source
from ..data.tsv import BadRow, BadRowPolicy
from ..errors import ConfigError, InputError
from ..fileio import write_text_atomic
from ..infer.gallery import load_embed_config, provenance, run_embed
from ..infer.sharding import config_fingerprint
from .backends import open_store
from .gallery_access import describe_gallery, tsv_offsets
from .gallery_file import read_gallery
from .index import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    SearchIndex,
    make_store,
    measure_recall,
    new_collection_name,
    publish,
    read_metadata,
)

RECORDS = "records.jsonl"
HASH_BLOCK = 1 << 20


@dataclass
class SyncSummary:
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: dict = field(default_factory=dict)
    embedded: int = 0
    reused: int = 0
    embed_seconds: float = 0.0
    seconds: float = 0.0
    count: int = 0
    version: int = 0
    published: bool = False
    approximate: str = ""

    def lines(self):
        out = [(f"added {self.added}, changed {self.changed}, removed {self.removed}, unchanged {self.unchanged}, "
                f"skipped {sum(self.skipped.values())}")]
        out += [f"  skipped {n}: {reason}" for reason, n in sorted(self.skipped.items())]
        if self.embedded:
            rate = self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0
            out.append(f"embedded {self.embedded} image(s) in {self.embed_seconds:.1f} s ({rate:.2f} images/s)"
                       + (f"; reused {self.reused} from an interrupted sync" if self.reused else ""))
        if self.approximate:
            out.append(self.approximate)
        out.append(f"index: {self.count} items, version {self.version}" if self.published
                   else f"index: {self.count} items, already up to date (version {self.version})")
        out.append(f"time: {self.seconds:.1f} s")
        return out


@dataclass
class Entry:
    """One image of the source now."""
    id: str
    size: int
    mtime_ns: int           # folders; 0 for TSV rows
    path: str = None        # folders
    b64: str = None         # TSV rows
    line: int = None
    hash: str = None

    def digest(self):
        if self.hash is None:
            h = hashlib.blake2b(digest_size=16)
            if self.b64 is not None:
                h.update(self.b64.encode("ascii", "surrogateescape"))
            else:
                with open(self.path, "rb") as f:
                    while block := f.read(HASH_BLOCK):
                        h.update(block)
            self.hash = h.hexdigest()
        return self.hash


def sync_index(config, overrides, index_dir, source=None, kind="flat", backend="faiss", uri=None, metadata=None,
               target_recall=0.95, encoder=None, log=print):
    """Sync INDEX_DIR with its source (created from `source` with kind/backend/uri when INDEX_DIR is no index
    yet); returns a SyncSummary.  config, overrides: the inference YAML and -o values of the model that embeds;
    metadata: a file of user fields (JSONL objects with "id", or `id \\t text` lines) replacing the recorded ones;
    encoder (tests) replaces the configured one."""
    start = time.time()
    index_dir = os.path.abspath(index_dir)
    old = _open_existing(index_dir, source)
    src = old.manifest["gallery"]["path"] if old else _new_source(index_dir, source)
    summary = SyncSummary()
    records = _read_records(index_dir) if old else {}
    entries, bad = _scan(src)
    summary.skipped = _count_reasons(bad)
    by_id = {e.id: e for e in entries}
    old_rows = {item_id: row for row, item_id in enumerate(old.ids)} if old else {}
    adopt_before = _adoption_time(old, records)
    delta = []
    for e in entries:
        state = _state(e, records.get(e.id), e.id in old_rows, adopt_before, src)
        if state == "unchanged":
            summary.unchanged += 1
        else:
            setattr(summary, state, getattr(summary, state) + 1)
            delta.append(e)
    removed = [i for i in (old.ids if old else ()) if i not in by_id]
    summary.removed = len(removed)

    work = _work_dir(index_dir)
    cfg = None
    new_vectors = {}
    if delta:
        cfg, new_vectors, embed_stats = _embed(config, overrides, work, src, delta, index_dir, encoder)
        summary.embedded, summary.reused, summary.embed_seconds = embed_stats
        for reason, n in _count_reasons([BadRow(e.path or src, e.line, "bad image")
                                         for e in delta if e.id not in new_vectors]).items():
            summary.skipped[reason] = summary.skipped.get(reason, 0) + n
    user_fields = _user_fields(metadata, [e.id for e in entries], records, old)

    ids, vectors_new, new_records, meta = [], [], [], []
    old_vectors = old.vectors() if old and (len(entries) - len(delta)) else None
    delta_ids = {e.id for e in delta}
    for e in entries:
        if e.id in new_vectors:
            vector = new_vectors[e.id]
        elif e.id in old_rows and e.id not in delta_ids:
            vector = old_vectors[old_rows[e.id]]
        else:
            continue  # a bad image (skipped)
        ids.append(e.id)
        vectors_new.append(vector)
        fields = user_fields.get(e.id) or {}
        new_records.append({"id": e.id, "size": e.size, "mtime_ns": e.mtime_ns, "hash": e.digest(), "fields": fields})
        meta.append({**_source_fields(e), **fields})
    if not ids:
        raise InputError(f"{src}: no usable images to index")
    vectors = np.stack(vectors_new).astype(np.float32)
    if old and vectors.shape[1] != old.dim:
        raise ConfigError(f"{config}: the model embeds in dimension {vectors.shape[1]}, the index {old.dim}; "
                          f"sync with the model that built it")
    changed_meta = old is None or removed or delta or new_records != [records.get(i) for i in ids] or \
        meta != [old.metadata[old_rows[i]] if old.metadata else None for i in ids]
    summary.count = len(ids)
    if not changed_meta:
        summary.version = old.version
        shutil.rmtree(work, ignore_errors=True)
        summary.seconds = time.time() - start
        return summary

    manifest = dict(old.manifest) if old else _new_manifest(index_dir, src, kind, backend, uri, cfg, vectors)
    manifest["gallery"] = describe_gallery(src)
    manifest["embedded_before_ns"] = time.time_ns()
    store = _store(manifest, old, ids, vectors, meta, removed, delta, target_recall, summary, log)
    offsets = tsv_offsets(src, ids)[0] if manifest["gallery"]["kind"] == "tsv" else None
    try:
        publish(index_dir, store, ids, meta, manifest, offsets, vectors=vectors, records=new_records)
    except BaseException:
        if old is None and manifest["backend"] == "milvus":
            store.drop()  # the collection of an index that was never published
        raise
    summary.published, summary.version = True, manifest["version"]
    shutil.rmtree(work, ignore_errors=True)
    summary.seconds = time.time() - start
    return summary


def _open_existing(index_dir, source):
    if not os.path.isfile(os.path.join(index_dir, MANIFEST)):
        return None
    index = SearchIndex(index_dir)
    gallery = index.manifest.get("gallery")
    if not gallery:
        raise InputError(f"{index_dir}: this index records no image folder or TSV (built from "
                         f"{index.manifest.get('embeddings')}); sync needs one: build it from an embed of images")
    if source and os.path.abspath(source) != gallery["path"]:
        raise InputError(f"--source {source}: this index was built from {gallery['path']}, not from it; sync it "
                         f"with its own source or build a new index")
    if not os.path.exists(gallery["path"]):
        raise InputError(f"{gallery['path']}: the source of this index is gone (moved or deleted)")
    return index


def _new_source(index_dir, source):
    if not source:
        raise InputError(f"{index_dir}: not a search index yet; give --source FOLDER_OR_TSV to create it")
    return describe_gallery(source)["path"]


def _read_records(index_dir):
    path = os.path.join(index_dir, RECORDS)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, f)}


def _adoption_time(old, records):
    """Items of an index without records were embedded from what the source held when its embeddings were
    written: files modified before then are adopted unchanged."""
    if not old or records:
        return None
    return old.manifest.get("embedded_before_ns")


def _scan(src):
    """(entries in the source's order, bad rows); duplicate ids of a TSV after their first row are bad rows."""
    source = image_source(src)
    entries, bad, seen = [], [], set()
    if isinstance(source, FolderImages):
        for item in source.items():
            st = os.stat(item.path)
            entries.append(Entry(item.id, st.st_size, st.st_mtime_ns, path=item.path))
        return entries, bad
    assert isinstance(source, TsvImages)
    for item in source.items():
        if isinstance(item, BadRow):
            bad.append(item)
        elif item.id in seen:
            bad.append(BadRow(src, item.line, f"duplicate image id {item.id!r}"))
        else:
            seen.add(item.id)
            entries.append(Entry(item.id, len(item.b64), 0, b64=item.b64, line=item.line))
    return entries, bad


def _state(entry, record, indexed, adopt_before, src):
    if not indexed:
        return "added"
    if record:
        if entry.path is not None and (record["size"], record["mtime_ns"]) == (entry.size, entry.mtime_ns):
            entry.hash = record["hash"]
            return "unchanged"
        return "unchanged" if entry.digest() == record["hash"] else "changed"
    if adopt_before is not None:
        modified = entry.mtime_ns if entry.path is not None else os.stat(src).st_mtime_ns
        if modified <= adopt_before:
            return "unchanged"
    return "changed"


def _count_reasons(bad):
    policy = BadRowPolicy("skip")
    policy.skipped = list(bad)
    return dict(policy.reason_counts())


def _work_dir(index_dir):
    return os.path.join(os.path.dirname(index_dir), f".{os.path.basename(index_dir)}.sync")


def _embed(config, overrides, work, src, delta, index_dir, encoder):
    """Embed the delta items with `embed` from a work folder that is the same on a resumed sync (so its chunks
    are reused); returns (cfg, {id: vector}, (embedded, reused, seconds))."""
    os.makedirs(work, exist_ok=True)
    subset = _materialise(work, delta)
    output = os.path.join(work, "delta.npz")
    skipped_log = os.path.join(os.path.dirname(index_dir), f"{os.path.basename(index_dir)}.sync-skipped.txt")
    cfg = load_embed_config(config, list(overrides) + [("images", subset), ("output_file", output),
                                                       ("bad_row_log", skipped_log)])
    stamp_file = os.path.join(work, "delta.json")
    stamp = config_fingerprint(cfg, image_source(subset).stamp())
    start = time.time()
    reused = 0
    if os.path.isfile(output) and _read_json(stamp_file).get("stamp") == stamp:
        embedded = 0
        reused = len(delta)  # the delta.npz of an interrupted sync, complete
    else:
        embedded = None  # counted from the output below
        if os.path.exists(stamp_file):
            os.remove(stamp_file)
        try:
            result = run_embed(cfg, encoder=encoder)
            # (the summary's name for "items of chunks an earlier run finished"; infer/ is being reworked)
            reused = getattr(result, "reused_items", None)
            reused = getattr(result, "reused", 0) if reused is None else reused
        except InputError as e:
            if "nothing to embed" not in str(e):  # every new image was bad (skipped): nothing to add
                raise
            return cfg, {}, (0, 0, time.time() - start)
        write_text_atomic(stamp_file, json.dumps({"stamp": stamp}))
    ids, vectors, _, _ = read_gallery(output)
    embedded = max(0, len(ids) - reused) if embedded is None else embedded
    return cfg, dict(zip(ids, vectors)), (embedded, reused, time.time() - start)


def _materialise(work, delta):
    """The delta as an images source: a folder of links at the items' relative paths, or a TSV of their rows;
    left untouched when it already holds exactly these (so that its stamp, and the embed chunks, stay valid)."""
    if delta[0].b64 is not None:
        path = os.path.join(work, "delta.tsv")
        text = "".join(f"{e.id}\t{e.b64}\n" for e in delta)
        if not os.path.isfile(path) or _read_text(path) != text:
            write_text_atomic(path, text)
        return path
    root = os.path.join(work, "images")
    wanted = {os.path.join(root, *e.id.split("/")): os.path.abspath(e.path) for e in delta}
    for folder, _, names in os.walk(root):
        for name in names:
            link = os.path.join(folder, name)
            if not os.path.islink(link) or wanted.get(link) != os.readlink(link):
                os.remove(link)
    for link, target in wanted.items():
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(target, link)
    return root


def _read_text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _user_fields(metadata, ids, records, old):
    """{id: user fields}: from --metadata when given (replacing the recorded ones), else the records', else (an
    index built by `index build --metadata`, no records yet) its metadata objects."""
    if not metadata and not records and old is not None and old.metadata:
        built = {i: m for i, m in zip(old.ids, old.metadata) if isinstance(m, dict)}
        return {i: built.get(i) or {} for i in ids}
    if not metadata:
        return {i: (records.get(i) or {}).get("fields") or {} for i in ids}
    values = read_metadata(metadata, ids)
    return {i: (v if isinstance(v, dict) else {"text": v}) for i, v in zip(ids, values) if v is not None}


def _source_fields(entry):
    """The filterable fields every item has: for folder images its relative path, folder, size and mtime."""
    if entry.path is None:
        return {"line": entry.line}
    folder = entry.id.rsplit("/", 1)[0] if "/" in entry.id else ""
    return {"path": entry.id, "folder": folder, "size": entry.size, "mtime": entry.mtime_ns / 1e9}


def _new_manifest(index_dir, src, kind, backend, uri, cfg, vectors):
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "backend": backend,
                "embeddings": None, "provenance": provenance(cfg, "images", vectors.shape[1]) if cfg else {}}
    if backend == "milvus":
        if not uri:
            raise ConfigError("--backend milvus needs --uri (a local file for Milvus Lite, or http://host:19530)")
        manifest.update(uri=uri, collection=new_collection_name(index_dir))
    return manifest


def _store(manifest, old, ids, vectors, meta, removed, delta, target_recall, summary, log):
    """The new index's store: built anew (flat, hnsw, a new Milvus index), refilled (ivf_pq), or updated in place
    (an existing Milvus collection)."""
    kind = manifest["kind"]
    if manifest["backend"] == "milvus" and old is not None:
        store = open_store("milvus", uri=manifest["uri"], collection=manifest["collection"], dim=vectors.shape[1],
                           ids=ids)
        row = {i: r for r, i in enumerate(ids)}
        old_meta = {i: (old.metadata[r] if old.metadata else None) for r, i in enumerate(old.ids)}
        touched = sorted({e.id for e in delta if e.id in row} | {i for i in ids if old_meta.get(i) != meta[row[i]]},
                         key=row.get)
        store.upsert(touched, vectors[[row[i] for i in touched]], [meta[row[i]] for i in touched])
        store.delete(removed)
        manifest.update(count=len(ids), dim=int(vectors.shape[1]))
        return store
    if kind == "ivf_pq" and old is not None:
        trained_count = manifest.get("trained_count", old.count)
        if trained_count / 2 <= len(ids) <= trained_count * 2:
            store = old.store.refilled(vectors)
            store.set_params(manifest["search_params"])
            recall = measure_recall(store, vectors)
            bar = manifest.get("recall_bar", 0.0)
            if min(recall.values()) >= bar:
                manifest.update(recall_at_10=recall, count=len(ids))
                summary.approximate = f"ivf_pq: recall@10 {recall} at the recorded parameters, bar {bar}: kept"
                manifest["last_sync"] = {"action": "kept", "recall_at_10": recall}
                return store
            store = make_store(manifest, ids, vectors, meta, target_recall=manifest.get("target_recall", 0.95),
                               log=log, trained=old.store)
            manifest["recall_bar"] = bar  # the bar stays the one the build measured
            if min(manifest["recall_at_10"].values()) >= bar:
                summary.approximate = f"ivf_pq: recall@10 fell to {recall}, below {bar}: re-tuned to " \
                                      f"{manifest['search_params']} ({manifest['recall_at_10']})"
                manifest["last_sync"] = {"action": "retuned", "recall_at_10": manifest["recall_at_10"]}
                return store
        manifest.pop("trained_count", None)
        store = make_store(manifest, ids, vectors, meta, target_recall=manifest.get("target_recall", target_recall),
                           log=log)
        summary.approximate = f"ivf_pq: retrained on {len(ids)} items: recall@10 {manifest['recall_at_10']}"
        manifest["last_sync"] = {"action": "retrained", "recall_at_10": manifest["recall_at_10"]}
        return store
    store = make_store(manifest, ids, vectors, meta, target_recall=manifest.get("target_recall", target_recall),
                       log=log)
    if kind != "flat":
        summary.approximate = f"{kind}: rebuilt, recall@10 {manifest['recall_at_10']}"
        manifest["last_sync"] = {"action": "rebuilt", "recall_at_10": manifest["recall_at_10"]}
    return store
