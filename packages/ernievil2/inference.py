"""Streaming cross-modal embedding extraction: the engine behind `run_infer.sh`.

Rows flow through a bounded pipeline, so memory does not grow with the file:
  main process: read + validate rows -> plan batches (which rows bring an image not seen recently)
  worker processes: tokenise texts, decode + preprocess the new images  (overlapped with model compute)
  main process: encode new images (each distinct image once), encode texts, write rows in input order.
Outputs (the official 3-column text file and a `.npz` sidecar) are written under temporary names and renamed
only when complete.
"""
import collections
import hashlib
import multiprocessing
import os
import sys
import time
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from .config import REQUIRED, Field, load_config
from .fileio import atomic_path, temp_path_for
from .image_ops import DEFAULT_MAX_PIXELS, decode_base64_image, preprocess_eval
from .tokenizer import ErnieTokenizer
from .tsv import BadRow, BadRowPolicy, read_rows

WEIGHTS_HELP = ("Download the official ERNIE-ViL 2.0 Base weights (ERNIE_VIL2_BASE_ViT.pdparams, linked from the "
                "official Research/ERNIE-ViL2 readme) or use final.pdparams from run_train.sh, then set "
                "init_from_params.")
VOCAB_HELP = ("Use the ERNIE 3.0 base vocab.txt from the official release (packages/ernie_base_3.0/vocab.txt there) "
              "and set vocab_file.")

# Every key of the official ernie_vil_base.yaml keeps its meaning; the rest are ours, with defaults.
INFER_SCHEMA = {
    "input_dtype": Field("int64", choices=("int64",)),
    "device": Field("gpu", choices=("gpu", "cpu"), doc="falls back to cpu with a warning on a CPU-only Paddle"),
    "infer_batch_size": 10,
    "max_text_seqlen": 48,
    "vocab_file": Field(REQUIRED, type=str),
    "text_model_config": "./packages/ernie_base_3.0/ernie_config.base.json",
    "test_file": Field(REQUIRED, type=str),
    "output_file": Field(REQUIRED, type=str),
    "init_from_params": Field(REQUIRED, type=str),
    "pad_token": 0,
    "cls_token": 1,
    "sep_token": 2,
    "mask_token": 3,
    "unk_token": Field(None, type=int, doc="stale in the official YAML and unused: [UNK] comes from the vocab"),
    # --- our additions ---
    "vision_model": Field("vit_b16", type=(str, dict)),
    "image_size": 224,
    "engine": Field("auto", choices=("auto", "eager", "paddle_inference")),
    "inference_model_dir": Field(None, type=str, doc="exported towers; null: export init_from_params once"),
    "precision": Field("fp32", choices=("fp32", "bf16"),
                       doc="paddle_inference on the CPU: bf16 runs oneDNN's bfloat16 kernels (CPUs with "
                           "AVX512-BF16/AMX; ~1.6x faster per image, approximate: cosine >= 0.9998 to fp32)"),
    "num_workers": 1,
    "prefetch_batches": 4,
    "text_sort_window": Field(128, type=int, doc="rows whose captions are grouped by length before the texts are "
                                                 "batched (each batch pads to its longest); 1: input order"),
    "on_bad_row": Field("error", choices=("error", "skip")),
    "bad_row_log": Field(None, type=str, doc="default: <output_file>.skipped.txt"),
    "write_sidecar": True,
    "max_image_pixels": DEFAULT_MAX_PIXELS,
    "image_cache_size": 20000,
    "cpu_threads": 0,
    "progress": True,
}


def load_infer_config(path, overrides=()):
    cfg = load_config(INFER_SCHEMA, path, overrides)
    for key in ("infer_batch_size", "max_text_seqlen", "image_size", "image_cache_size", "prefetch_batches",
                "text_sort_window"):
        if cfg[key] < 1:
            raise ValueError(f"{path}: '{key}' must be >= 1, got {cfg[key]}")
    if cfg.max_text_seqlen < 3:
        raise ValueError(f"{path}: 'max_text_seqlen' must leave room for [CLS] and [SEP], got {cfg.max_text_seqlen}")
    return cfg


class InferenceError(RuntimeError):
    """A problem with the run's inputs (missing file, bad config); printed as one line by the CLI."""


@dataclass
class Summary:
    rows: int = 0
    written: int = 0
    images_encoded: int = 0
    images_reused: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=dict)
    output_file: str = ""
    sidecar_file: str = ""
    bad_row_log: str = ""

    def lines(self):
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        out = [f"rows read: {self.rows}, written: {self.written}, skipped: {sum(self.skipped.values())}",
               f"distinct images encoded: {self.images_encoded} (re-used for {self.images_reused} more rows)",
               f"time: {self.seconds:.1f} s, {rate:.2f} pairs/s",
               f"embeddings: {self.output_file}" + (f" (+ {self.sidecar_file})" if self.sidecar_file else "")]
        for reason, count in sorted(self.skipped.items()):
            out.append(f"  skipped {count} row(s): {reason}")
        if self.bad_row_log:
            out.append(f"skipped rows listed in {self.bad_row_log}")
        return out


# ---------------------------------------------------------------- worker side (no Paddle import here)

_WORKER_STATE = {}


def _init_worker(vocab_file, max_len, image_size, max_pixels):
    import cv2
    cv2.setNumThreads(1)  # the workers are the parallelism; nested threads would only contend
    _WORKER_STATE.update(tokenizer=ErnieTokenizer.from_file(vocab_file), max_len=max_len,
                         image_size=image_size, max_pixels=max_pixels)


def _prepare_batch(job):
    """job: (texts, images) where images is a list of base64 strings to decode (new images only).
    Returns (token ids [B, L] padded to the longest, pixels [n, 3, S, S], {image index: error reason})."""
    texts, images = job
    st = _WORKER_STATE
    ids = st["tokenizer"].batch_encode(texts, max_len=st["max_len"])
    pixels, errors = [], {}
    size = st["image_size"]
    for i, b64 in enumerate(images):
        try:
            pixels.append(preprocess_eval(decode_base64_image(b64, max_pixels=st["max_pixels"]), size))
        except ValueError as e:
            errors[i] = str(e)
            pixels.append(np.zeros((3, size, size), np.float32))
    pix = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), np.float32)
    return ids, pix, errors


class _InlinePool:
    """Stand-in for a process pool when num_workers is 0 (debugging, tiny inputs)."""

    class _Done:
        def __init__(self, value):
            self.value = value

        def get(self):
            return self.value

    def __init__(self, initargs):
        _init_worker(*initargs)

    def apply_async(self, fn, args):
        return self._Done(fn(*args))

    def terminate(self):
        pass

    def join(self):
        pass


# ---------------------------------------------------------------- planning and the main loop

@dataclass
class _Plan:
    rows: list            # Row objects in input order
    keys: list            # image cache key per row
    new_keys: list        # keys whose image this batch decodes, in the order sent to the worker


def image_key(row):
    digest = hashlib.blake2b(row.image_b64.encode("ascii", "surrogateescape"), digest_size=16).digest()
    return row.image_id, digest


class _LRU(collections.OrderedDict):
    def __init__(self, capacity):
        super().__init__()
        self.capacity = capacity

    def touch(self, key, value=None):
        if key in self:
            self.move_to_end(key)
            if value is not None:
                self[key] = value
        else:
            self[key] = value
            while len(self) > self.capacity:
                self.popitem(last=False)


def _plan_batches(items, batch_size, scheduled, policy):
    """Group valid rows into batches, marking the images not scheduled within the last `capacity` images."""
    rows, keys, new_keys = [], [], []
    for item in items:
        if isinstance(item, BadRow):
            policy(item)
            continue
        key = image_key(item)
        if key not in scheduled and key not in new_keys:
            new_keys.append(key)
        scheduled.touch(key)
        rows.append(item)
        keys.append(key)
        if len(rows) == batch_size:
            yield _Plan(rows, keys, new_keys)
            rows, keys, new_keys = [], [], []
    if rows:
        yield _Plan(rows, keys, new_keys)


def _prefetch(pool, plans, depth):
    """Submit up to `depth` batches ahead to the pool, yielding (plan, prepared) in order."""
    pending = collections.deque()
    for plan in plans:
        first_row = {k: r for r, k in zip(reversed(plan.rows), reversed(plan.keys))}
        images = [first_row[k].image_b64 for k in plan.new_keys]
        pending.append((plan, pool.apply_async(_prepare_batch, ((
            [r.text for r in plan.rows], images),))))
        if len(pending) >= depth:
            p, res = pending.popleft()
            yield p, res.get()
    while pending:
        p, res = pending.popleft()
        yield p, res.get()


def format_vector(vec):
    # str() of a float32 gives the shortest text that reads back to the same float32, as the official file has.
    return " ".join(map(str, vec))


class SidecarWriter:
    """Streams rows into an `.npz` (text [N, D], image [N, D], image_ids [N]) without holding them in memory:
    rows go to raw temporary files, and `finish` copies them into the zip behind .npy headers."""

    def __init__(self, path):
        self.path = path
        base = temp_path_for(path)  # hidden, beside the final file; removed by finish() or cleanup()
        self.parts = {name: f"{base}.{name}" for name in ("text", "image", "ids")}
        self.files = {name: open(p, "wb") for name, p in self.parts.items()}
        self.rows = 0
        self.dim = None
        self.id_len = 1

    def add(self, text_emb, image_emb, image_id):
        self.dim = text_emb.shape[-1]
        self.files["text"].write(np.ascontiguousarray(text_emb, np.float32).tobytes())
        self.files["image"].write(np.ascontiguousarray(image_emb, np.float32).tobytes())
        encoded = image_id.encode("utf-8")
        self.files["ids"].write(len(encoded).to_bytes(4, "little") + encoded)
        self.id_len = max(self.id_len, len(image_id))
        self.rows += 1

    def finish(self, text_check=None):
        """Assemble the .npz; with `text_check` ([byte size, CRC-32] of the finished text output) also record it,
        which lets eval_retri.py read this binary copy instead of parsing that file."""
        from .embedding_files import TEXT_FILE_CHECK
        for f in self.files.values():
            f.close()
        with atomic_path(self.path) as tmp:
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
                for name in ("text", "image"):
                    self._write_npy(zf, name, "<f4", (self.rows, self.dim or 0), self._copy(self.parts[name]))
                self._write_npy(zf, "image_ids", f"<U{self.id_len}", (self.rows,), self._ids())
                if text_check is not None:
                    check = np.asarray(text_check, dtype="<i8")
                    self._write_npy(zf, TEXT_FILE_CHECK, "<i8", (2,), [check.tobytes()])
        self.cleanup()

    def cleanup(self):
        for name, p in self.parts.items():
            self.files[name].close()
            if os.path.exists(p):
                os.remove(p)

    @staticmethod
    def _write_npy(zf, name, descr, shape, chunks):
        with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array_header_2_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
            for chunk in chunks:
                out.write(chunk)

    @staticmethod
    def _copy(path, chunk=1 << 22):
        with open(path, "rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    return
                yield block

    def _ids(self, per_chunk=4096):
        with open(self.parts["ids"], "rb") as f:
            batch = []
            while True:
                head = f.read(4)
                if head:
                    batch.append(f.read(int.from_bytes(head, "little")).decode("utf-8"))
                if len(batch) == per_chunk or (not head and batch):
                    yield np.array(batch, dtype=f"<U{self.id_len}").tobytes()
                    batch = []
                if not head:
                    return


def check_inputs(cfg, need_weights=True):
    """Name the missing file and what to do, before any work starts."""
    checks = [("init_from_params", WEIGHTS_HELP), ("vocab_file", VOCAB_HELP),
              ("test_file", "Set test_file to a UTF-8 TSV of text \\t image_id \\t base64 image rows."),
              ("text_model_config", "Use packages/ernie_base_3.0/ernie_config.base.json from this repository.")]
    for key, help_text in checks:
        path = cfg[key]
        if key == "init_from_params" and (cfg.inference_model_dir and cfg.engine == "paddle_inference"
                                          or not need_weights):
            continue
        if not os.path.isfile(path):
            raise InferenceError(f"{key}: file not found: {path}. {help_text}")
    if cfg.inference_model_dir and cfg.engine == "paddle_inference" and not os.path.isdir(cfg.inference_model_dir):
        raise InferenceError(f"inference_model_dir: directory not found: {cfg.inference_model_dir}. Export the "
                             f"towers first: python -m ernievil2.export CONFIG -o inference_model_dir=DIR")


def check_special_tokens(cfg, tokenizer):
    for key, actual in (("pad_token", tokenizer.pad_id), ("cls_token", tokenizer.cls_id),
                        ("sep_token", tokenizer.sep_id), ("mask_token", tokenizer.mask_id)):
        if cfg[key] != actual:
            raise InferenceError(f"{key}: the config says {cfg[key]} but {cfg.vocab_file} has id {actual}")


def resolve_device(requested):
    import paddle
    if requested == "gpu" and not paddle.is_compiled_with_cuda():
        print("warning: this Paddle build has no CUDA support; running on the CPU instead of the GPU",
              file=sys.stderr)
        requested = "cpu"
    paddle.set_device(requested)
    return requested


def iter_embeddings(cfg, encoder, tokenizer, policy, stats, progress=None):
    """Yield (row, text_embedding, image_embedding) for every good row of cfg.test_file, in input order.

    Bad rows go to `policy`; `stats` (a Summary) receives the row and image counts.  Images are encoded per
    planned batch; texts wait for `text_sort_window` rows, are batched by length (`_encode_texts`), and then
    the window's rows are yielded in input order."""
    initargs = (cfg.vocab_file, cfg.max_text_seqlen, cfg.image_size, cfg.max_image_pixels)
    if cfg.num_workers > 0:
        pool = multiprocessing.get_context("spawn").Pool(cfg.num_workers, _init_worker, initargs)
    else:
        pool = _InlinePool(initargs)
    depth = max(cfg.prefetch_batches, cfg.num_workers)
    scheduled = _LRU(cfg.image_cache_size)
    # Sized so that every image the planner counted as scheduled is still here when its rows are written (up
    # to `depth` batches ahead of the model, and a text window plus one batch behind it).
    embeddings = _LRU(cfg.image_cache_size + (depth + 1) * cfg.infer_batch_size + cfg.text_sort_window)
    failed = _LRU(embeddings.capacity)
    counted = _RowCounter(read_rows(cfg.test_file))
    window = []  # (row, image key, token ids [L]) of rows whose texts are not encoded yet

    def flush():
        text_emb = _encode_texts(encoder, [ids for _, _, ids in window], cfg.infer_batch_size, tokenizer.pad_id)
        for (row, key, _), vec in zip(window, text_emb):
            embeddings.move_to_end(key)
            yield row, vec, embeddings[key]
        stats.written += len(window)
        if progress is not None:
            progress.update(len(window))
        window.clear()

    try:
        plans = _plan_batches(counted, cfg.infer_batch_size, scheduled, policy)
        for plan, (ids, pixels, errors) in _prefetch(pool, plans, depth):
            _encode_new_images(plan, pixels, errors, encoder, embeddings, failed, stats)
            for i, (row, key) in enumerate(zip(plan.rows, plan.keys)):
                if key in failed:
                    failed.move_to_end(key)
                    policy(BadRow(cfg.test_file, row.line, failed[key]))
                    if progress is not None:
                        progress.update(1)
                else:
                    embeddings.move_to_end(key)
                    window.append((row, key, ids[i]))
            if len(window) >= cfg.text_sort_window:
                yield from flush()
        if window:
            yield from flush()
    finally:
        pool.terminate()
        pool.join()
        stats.rows = counted.count
        stats.images_reused = stats.written - stats.images_encoded


def _encode_texts(encoder, ids, batch_size, pad_id):
    """Embeddings of token-id rows (1-D, padded at the end with pad_id to any width), in the given order.  The
    rows are encoded in batches of similar length, each batch trimmed to its longest row: with captions of mixed
    lengths a batch in input order pads to its longest caption, and much of the text tower's work is padding."""
    width = max(len(row) for row in ids)
    ids = np.stack([np.pad(row, (0, width - len(row)), constant_values=pad_id) for row in ids])
    lengths = (ids != pad_id).sum(1)
    order = np.argsort(lengths, kind="stable")
    out = None
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        emb = encoder.encode_text(ids[chunk, :max(1, int(lengths[chunk].max()))])
        if out is None:
            out = np.empty((len(ids), emb.shape[1]), emb.dtype)
        out[chunk] = emb
    return out


def run_inference(cfg, encoder=None):
    """Embed every row of cfg.test_file into cfg.output_file (+ sidecar); returns a Summary.
    `encoder` (tests, the trainer) replaces the configured one."""
    from .encoders import make_encoder  # imports Paddle: kept out of the worker processes

    check_inputs(cfg, need_weights=encoder is None)
    start = time.time()
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    check_special_tokens(cfg, tokenizer)
    encoder = encoder or make_encoder(cfg)
    policy = BadRowPolicy(cfg.on_bad_row, cfg.bad_row_log or f"{cfg.output_file}.skipped.txt")
    summary = Summary(output_file=cfg.output_file)
    sidecar_path = os.path.splitext(cfg.output_file)[0] + ".npz" if cfg.write_sidecar else None
    sidecar = SidecarWriter(sidecar_path) if sidecar_path else None
    progress = _progress(cfg.progress)
    try:
        with atomic_path(cfg.output_file) as tmp_out, open(tmp_out, "wb") as out:
            size, crc = 0, 0  # of the bytes written, for the sidecar's check (no second read of the file)
            for row, text_emb, image_emb in iter_embeddings(cfg, encoder, tokenizer, policy, summary, progress):
                line = f"{format_vector(text_emb)}\t{format_vector(image_emb)}\t{row.image_id}\n".encode("utf-8")
                out.write(line)
                size, crc = size + len(line), zlib.crc32(line, crc)
                if sidecar:
                    sidecar.add(text_emb, image_emb, row.image_id)
            if sidecar:
                sidecar.finish(text_check=(size, crc))
                summary.sidecar_file = sidecar_path
        policy.close()
    finally:
        progress.close()
        if sidecar:
            sidecar.cleanup()
    summary.skipped = dict(policy.reason_counts())
    summary.bad_row_log = policy.log_path if policy.skipped else ""
    summary.seconds = time.time() - start
    return summary


def embed_file(cfg, encoder):
    """Embed cfg.test_file into memory (the trainer's dev evaluation): (text [N,D], image [N,D], image_ids)."""
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    policy = BadRowPolicy(cfg.on_bad_row)
    texts, images, ids = [], [], []
    for row, t, i in iter_embeddings(cfg, encoder, tokenizer, policy, Summary()):
        texts.append(t)
        images.append(i)
        ids.append(row.image_id)
    if not ids:
        raise InferenceError(f"{cfg.test_file}: no usable rows to embed")
    return np.stack(texts), np.stack(images), ids


def _encode_new_images(plan, pixels, errors, encoder, embeddings, failed, summary):
    if not plan.new_keys:
        return
    good = [i for i in range(len(plan.new_keys)) if i not in errors]
    for i, reason in errors.items():
        line = plan.rows[plan.keys.index(plan.new_keys[i])].line
        failed.touch(plan.new_keys[i], f"bad image (first seen at line {line}): {reason}")
    if good:
        vectors = encoder.encode_image(pixels[good])
        for i, vec in zip(good, vectors):
            embeddings.touch(plan.new_keys[i], vec)
        summary.images_encoded += len(good)


class _RowCounter:
    def __init__(self, items):
        self.items = items
        self.count = 0

    def __iter__(self):
        for item in self.items:
            self.count += 1
            yield item


def _progress(enabled):
    from tqdm import tqdm
    return tqdm(unit="pair", desc="embedding", disable=not enabled, dynamic_ncols=True, mininterval=1.0)
