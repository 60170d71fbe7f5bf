"""`python -m ernievil2 embed`: embed an image gallery (a folder or an `image_id \\t base64` TSV) or a list of
text queries (a text file or JSONL) into OUT.npz: `ids`, `embeddings` (float32 [N, D], L2-normalised) and, for
texts, `texts`.  Streaming with bounded memory, worker processes and the bad-row policy of run_infer.sh."""
import json
import os
import time
from dataclasses import dataclass, field

import numpy as np

from ..config import Field
from ..data.sources import image_items, text_items
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRow, BadRowPolicy
from ..errors import ConfigError, InputError
from ..fileio import NpzWriter, remove_stale_temps
from .engines import make_encoder
from .options import QUERY_SCHEMA, engine_options, load_query_config, pipeline_options
from .pipeline import encode_texts_by_length
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

    def lines(self):
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        out = [f"items read: {self.items}, embedded: {self.embedded}, skipped: {sum(self.skipped.values())}",
               f"time: {self.seconds:.1f} s, {rate:.2f} items/s", f"embeddings: {self.output_file}"]
        out += [f"  skipped {count} item(s): {reason}" for reason, count in sorted(self.skipped.items())]
        if self.bad_row_log:
            out.append(f"skipped items listed in {self.bad_row_log}")
        return out


def iter_image_embeddings(items, options, encoder, policy, summary, progress=None):
    """Yield (ImageItem, L2-normalised embedding [D]) for the good items of `items`, in order; decoding and
    preprocessing run in the worker processes, `options.batch_size` images per job."""
    pool = start_pool(options)
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
        pool.terminate()
        pool.join()


def iter_text_embeddings(items, options, encoder, tokenizer, policy, summary, progress=None):
    """Yield (TextItem, L2-normalised embedding [D]) in order; texts are tokenised in the workers and encoded in
    batches of similar length (`text_sort_window` items at a time)."""
    pool = start_pool(options)
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
        pool.terminate()
        pool.join()


def run_embed(cfg, encoder=None):
    """The `embed` command: cfg from load_embed_config; `encoder` (tests) replaces the configured one."""
    start = time.time()
    kind = "images" if cfg.images else "texts"
    src = cfg.images or cfg.texts
    items = image_items(src) if kind == "images" else text_items(src)  # a missing source fails before loading
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file) if kind == "texts" else None
    encoder = encoder or make_encoder(engine_options(cfg))
    options = pipeline_options(cfg)
    remove_stale_temps(cfg.output_file)
    policy = BadRowPolicy(options.on_bad_row, cfg.bad_row_log or f"{cfg.output_file}.skipped.txt")
    summary = GallerySummary(output_file=cfg.output_file)
    strings = ("ids", "texts") if kind == "texts" else ("ids",)
    writer = NpzWriter(cfg.output_file, matrices=("embeddings",), strings=strings)
    progress = _progress(cfg.progress, kind)
    try:
        if kind == "images":
            embedded = iter_image_embeddings(items, options, encoder, policy, summary, progress)
        else:
            embedded = iter_text_embeddings(items, options, encoder, tokenizer, policy, summary, progress)
        for block in batched(embedded, 1024):
            columns = {"ids": [item.id for item, _ in block], "embeddings": np.stack([v for _, v in block])}
            if kind == "texts":
                columns["texts"] = [item.text for item, _ in block]
            writer.add(**columns)
        if summary.embedded == 0:
            raise InputError(f"{src}: nothing to embed (no usable {kind})")
        writer.finish(extra={"provenance": np.array(json.dumps(provenance(cfg, kind, encoder)))})
        policy.close()
    finally:
        progress.close()
        writer.cleanup()
    summary.skipped = dict(policy.reason_counts())
    summary.bad_row_log = policy.log_path if policy.skipped else ""
    summary.seconds = time.time() - start
    return summary


def provenance(cfg, kind, encoder):
    """What made these embeddings: kept in the .npz, and in the manifest of an index built from it."""
    def absolute(path):
        return os.path.abspath(path) if path else None
    return {"kind": kind, "source": absolute(cfg.images or cfg.texts), "weights": absolute(cfg.init_from_params),
            "inference_model_dir": absolute(cfg.inference_model_dir), "vision_model": cfg.vision_model,
            "text_model_config": absolute(cfg.text_model_config), "image_size": cfg.image_size,
            "max_text_seqlen": cfg.max_text_seqlen, "engine": cfg.engine, "precision": cfg.precision,
            "embed_dim": int(encoder.embed_dim)}


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


def _progress(enabled, kind):
    from tqdm import tqdm
    return tqdm(unit=kind[:-1], desc=f"embedding {kind}", disable=not enabled, dynamic_ncols=True, mininterval=1.0)
