"""`python -m ernievil2 embed`: embed an image gallery (a folder or an `image_id \\t base64` TSV) or a list of
text queries (a text file or JSONL) into OUT.npz: `ids`, `embeddings` (float32 [N, D], L2-normalised) and, for
texts, `texts`.  Streaming with bounded memory, worker processes and the bad-row policy of run_infer.sh."""
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import Field
from ..data.sources import image_source, text_source
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRow, BadRowPolicy
from ..errors import ConfigError, InputError
from ..fileio import NpzWriter, remove_stale_temps
from .engines import make_encoder
from .options import QUERY_SCHEMA, engine_options, load_query_config, pipeline_options
from .pipeline import encode_texts_by_length
from .sharding import ChunkedRun, config_fingerprint, current_rank
from .workers import prefetched, prepare_images, prepare_texts, start_pool

GALLERY_KEYS = {
    "images": Field(None, type=str, doc="a folder of images (recursive) or an image_id \\t base64 TSV"),
    "texts": Field(None, type=str, doc="a text file (one query per line) or JSONL with text_id and text"),
}
EMBED_SCHEMA = {**QUERY_SCHEMA, **GALLERY_KEYS}


def load_embed_config(path, overrides=()):
    """An inference YAML with `images` or `texts` and an .npz output_file."""
    cfg = load_query_config(path, overrides, EMBED_SCHEMA)
    source = path or "<config>"
    if (cfg.images is None) == (cfg.texts is None):
        raise ConfigError(f"{source}: set exactly one of 'images' or 'texts' (-o images=SRC or -o texts=SRC)")
    if not (cfg.output_file or "").endswith(".npz"):
        raise ConfigError(f"{source}: 'output_file' must end in .npz for embed, got {cfg.output_file!r} "
                          f"(add -o output_file=OUT.npz)")
    return cfg


@dataclass
class GallerySummary:
    items: int = 0
    embedded: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)
    output_file: str = ""
    bad_row_log: str = ""
    rank: int = 0
    world: int = 1
    reused_items: int = 0
    stale_chunks: int = 0

    def lines(self):
        if self.rank:
            return [f"rank {self.rank} of {self.world}: done (rank 0 writes {self.output_file})"]
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        out = [f"items read: {self.items}, embedded: {self.embedded}, skipped: {sum(self.skipped.values())}",
               f"time: {self.seconds:.1f} s, {rate:.2f} items/s", f"embeddings: {self.output_file}"]
        if self.reused_items:
            out.append(f"resumed: reused {self.reused_items} items embedded by an earlier run")
        if self.stale_chunks:
            out.append(f"refused {self.stale_chunks} chunk(s) of an earlier run with another input, config or "
                       f"weights")
        out += [f"  skipped {count} item(s): {reason}" for reason, count in sorted(self.skipped.items())]
        if self.bad_row_log:
            out.append(f"skipped items listed in {self.bad_row_log}")
        return out


def iter_image_embeddings(items, options, encoder, policy, summary, progress=None, pool=None):
    """Yield (ImageItem, L2-normalised embedding [D]) for the good items of `items`, in order; decoding and
    preprocessing run in the worker processes (`pool`, or one started here), `options.batch_size` images per
    job."""
    own_pool = pool is None
    pool = start_pool(options) if own_pool else pool
    depth = max(options.prefetch_batches, options.num_workers)
    try:
        jobs = ((batch, [(item.path, item.b64) for item in batch])
                for batch in batched(_counted(items, policy, summary), options.batch_size))
        for batch, (pixels, errors) in prefetched(pool, prepare_images, jobs, depth):
            good = [i for i in range(len(batch)) if i not in errors]
            for i, reason in errors.items():
                policy(BadRow(batch[i].source, batch[i].line, f"bad image: {reason}"))
            vectors = encoder.encode_image(pixels[good]) if good else []
            for i, vector in zip(good, vectors):
                summary.embedded += 1
                yield batch[i], vector
            if progress is not None:
                progress.update(len(batch))
    finally:
        if own_pool:
            pool.terminate()
            pool.join()


def iter_text_embeddings(items, options, encoder, tokenizer, policy, summary, progress=None, pool=None):
    """Yield (TextItem, L2-normalised embedding [D]) in order; texts are tokenised in the workers (`pool`, or
    one started here) and encoded in batches of similar length (`text_sort_window` items at a time)."""
    own_pool = pool is None
    pool = start_pool(options) if own_pool else pool
    depth = max(options.prefetch_batches, options.num_workers)
    window = max(options.text_sort_window, options.batch_size)
    try:
        jobs = ((batch, [item.text for item in batch])
                for batch in batched(_counted(items, policy, summary), window))
        for batch, ids in prefetched(pool, prepare_texts, jobs, depth):
            vectors = encode_texts_by_length(encoder, list(ids), options.batch_size, tokenizer.pad_id)
            for item, vector in zip(batch, vectors):
                summary.embedded += 1
                yield item, vector
            if progress is not None:
                progress.update(len(batch))
    finally:
        if own_pool:
            pool.terminate()
            pool.join()


def run_embed(cfg, encoder=None):
    """The `embed` command: cfg from load_embed_config; `encoder` (tests) replaces the configured one.  Chunked,
    sharded over ranks and resumable like run_infer.sh (infer.sharding)."""
    start = time.time()
    kind = "images" if cfg.images else "texts"
    src = cfg.images or cfg.texts
    source = image_source(src) if kind == "images" else text_source(src)  # a missing source fails before loading
    rank, world = current_rank()
    run = ChunkedRun(cfg.output_file, config_fingerprint(cfg, source.stamp()), source.count, cfg.chunk_rows,
                     rank, world)
    summary = GallerySummary(output_file=cfg.output_file, rank=rank, world=world)
    summary.stale_chunks, todo, summary.reused_items = run.plan()
    try:
        if todo:
            _embed_gallery_chunks(run, todo, source, kind, cfg, encoder)
        if rank == 0:
            run.wait_for_all()
            _merge_gallery(run, cfg, kind, summary)
            run.remove()
    finally:
        run.remove_if_empty()
    summary.seconds = time.time() - start
    return summary


def _embed_gallery_chunks(run, chunks, source, kind, cfg, encoder):
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file) if kind == "texts" else None
    options = pipeline_options(cfg)
    pool = start_pool(options)  # first: the workers start while the model loads here
    progress = _progress(cfg.progress, kind, total=sum(run.rows(c)[1] - run.rows(c)[0] for c in chunks))
    strings = ("ids", "texts") if kind == "texts" else ("ids",)
    try:
        encoder = encoder or make_encoder(engine_options(cfg))
        for chunk in chunks:
            items = source.items(*run.rows(chunk))
            stats, policy = GallerySummary(), BadRowPolicy(options.on_bad_row)

            def fill(writer):
                if kind == "images":
                    embedded = iter_image_embeddings(items, options, encoder, policy, stats, progress, pool)
                else:
                    embedded = iter_text_embeddings(items, options, encoder, tokenizer, policy, stats, progress, pool)
                for block in batched(embedded, 1024):
                    columns = {"ids": [item.id for item, _ in block], "embeddings": np.stack([v for _, v in block])}
                    if kind == "texts":
                        columns["texts"] = [item.text for item, _ in block]
                    writer.add(**columns)
                return {"items": stats.items, "embedded": stats.embedded, "embed_dim": encoder.embed_dim,
                        "skipped": [[b.path, b.line, b.reason] for b in policy.skipped]}
            run.write_chunk(chunk, ("embeddings",), strings, fill, done=chunks.index(chunk) + 1)
    finally:
        progress.close()
        pool.terminate()
        pool.join()


def _merge_gallery(run, cfg, kind, summary):
    """Rank 0: the chunks, in order, into OUT.npz (+ provenance) and the bad-row log."""
    remove_stale_temps(cfg.output_file)
    policy = BadRowPolicy("skip", cfg.bad_row_log or f"{cfg.output_file}.skipped.txt")
    strings = ("ids", "texts") if kind == "texts" else ("ids",)
    writer = NpzWriter(cfg.output_file, matrices=("embeddings",), strings=strings)
    embed_dim = None
    try:
        for chunk in range(run.count):
            arrays, meta = run.load(chunk)
            if meta["embedded"]:
                writer.add(**{name: arrays[name] if name == "embeddings" else list(arrays[name])
                              for name in ("embeddings",) + strings})
            summary.items += meta["items"]
            summary.embedded += meta["embedded"]
            embed_dim = meta["embed_dim"]
            policy.skipped += [BadRow(*bad) for bad in meta["skipped"]]
        if summary.embedded == 0:
            raise InputError(f"{cfg.images or cfg.texts}: nothing to embed (no usable {kind})")
        writer.finish(extra={"provenance": np.array(json.dumps(provenance(cfg, kind, embed_dim)))})
        policy.close()
    finally:
        writer.cleanup()
    summary.skipped = dict(policy.reason_counts())
    summary.bad_row_log = policy.log_path if policy.skipped else ""


def provenance(cfg, kind, embed_dim):
    """What made these embeddings: kept in the .npz, and in the manifest of an index built from it."""
    def absolute(path):
        return os.path.abspath(path) if path else None
    return {"kind": kind, "source": absolute(cfg.images or cfg.texts), "weights": absolute(cfg.init_from_params),
            "inference_model_dir": absolute(cfg.inference_model_dir), "vision_model": cfg.vision_model,
            "text_model_config": absolute(cfg.text_model_config), "image_size": cfg.image_size,
            "max_text_seqlen": cfg.max_text_seqlen, "engine": cfg.engine, "precision": cfg.precision,
            "embed_dim": int(embed_dim)}


def _counted(items, policy, summary):
    """The good items; bad ones go to the policy.  summary.items counts both."""
    for item in items:
        summary.items += 1
        if isinstance(item, BadRow):
            policy(item)
        else:
            yield item


def batched(iterable, size):
    """Lists of `size` consecutive items (the last one shorter)."""
    batch = []
    for x in iterable:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _progress(enabled, kind, total=None):
    from tqdm import tqdm
    return tqdm(total=total, unit=kind[:-1], desc=f"embedding {kind}", disable=not enabled, dynamic_ncols=True,
                mininterval=1.0)
