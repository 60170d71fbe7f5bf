"""`python -m ernievil2 embed`: embed an image gallery (a folder or an `image_id \\t base64` TSV) or a list of
text queries (a text file or JSONL) into OUT.npz: `ids`, `embeddings` (float32 [N, D], L2-normalised) and, for
texts, `texts`.  Streaming with bounded memory, worker processes and the bad-row policy of run_infer.sh."""
import json
import os
from dataclasses import dataclass

import numpy as np

from ..data.sources import image_source, text_source
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRow
from ..errors import ConfigError, InputError
from ..fileio import NpzWriter
from .engines import make_encoder
from .job import ChunkedJob, run_job
from .options import EMBED_SCHEMA, engine_options, load_query_config, pipeline_options
from .pipeline import encode_texts_by_length
from .sharding import config_fingerprint, source_hash
from .workers import prefetched, prepare_images, prepare_texts, start_pool


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
    """The `embed` command: cfg from load_embed_config; `encoder` (tests) replaces the configured one.  A chunked
    job (infer.job): sharded over ranks and resumable like run_infer.sh."""
    return run_job(GalleryJob(cfg, encoder))


class GalleryJob(ChunkedJob):
    """Images or texts of a gallery source -> OUT.npz of ids, embeddings (and texts)."""
    verb = "embedded"
    matrices = ("embeddings",)

    def __init__(self, cfg, encoder=None):
        self.kind = "images" if cfg.images else "texts"
        src = cfg.images or cfg.texts
        # (a missing source fails here, before the model loads)
        self.source = image_source(src) if self.kind == "images" else text_source(src)
        self.noun = self.kind[:-1]
        self.strings = ("ids", "texts") if self.kind == "texts" else ("ids",)
        super().__init__(cfg.output_file, config_fingerprint(cfg, source_hash(self.source)), self.source.count,
                         cfg.chunk_rows, pipeline_options(cfg), cfg.bad_row_log, cfg.progress)
        self.cfg, self.encoder, self.tokenizer = cfg, encoder, None

    def prepare(self):
        if self.kind == "texts":
            self.tokenizer = ErnieTokenizer.from_file(self.cfg.vocab_file)
        self.encoder = self.encoder or make_encoder(engine_options(self.cfg))

    def fill(self, first, stop, writer, policy, counts, progress, pool):
        items, stats = self.source.items(first, stop), ItemCounts()
        if self.kind == "images":
            embedded = iter_image_embeddings(items, self.options, self.encoder, policy, stats, progress, pool)
        else:
            embedded = iter_text_embeddings(items, self.options, self.encoder, self.tokenizer, policy, stats,
                                            progress, pool)
        for block in batched(embedded, 1024):
            columns = {"ids": [item.id for item, _ in block], "embeddings": np.stack([v for _, v in block])}
            if self.kind == "texts":
                columns["texts"] = [item.text for item, _ in block]
            writer.add(**columns)
        return stats.items, stats.embedded

    def start_merge(self):
        self.writer = NpzWriter(self.output_file, matrices=self.matrices, strings=self.strings)

    def merge_chunk(self, arrays):
        if len(arrays["ids"]):
            self.embed_dim = arrays["embeddings"].shape[1]
            self.writer.add(**{name: arrays[name] if name in self.matrices else list(arrays[name])
                               for name in self.matrices + self.strings})

    def finish_merge(self, summary):
        if summary.written == 0:
            raise InputError(f"{self.cfg.images or self.cfg.texts}: nothing to embed (no usable {self.kind})")
        meta = provenance(self.cfg, self.kind, self.embed_dim)
        self.writer.finish(extra={"provenance": np.array(json.dumps(meta))})

    def abort_merge(self):
        self.writer.cleanup()


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


@dataclass
class ItemCounts:
    """What iter_image_embeddings / iter_text_embeddings count."""
    items: int = 0
    embedded: int = 0
