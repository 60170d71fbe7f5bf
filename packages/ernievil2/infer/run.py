"""run_infer.sh: embed a TSV of text-image pairs into the official 3-column text file and its `.npz` sidecar.

Both outputs are written under temporary names and renamed only when complete; a run first removes the
temporaries that killed runs of the same output left behind.
"""
import os
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..data.row_index import RowIndex
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRow, BadRowPolicy, parse_row, read_rows
from ..errors import InputError
from ..eval.sidecar import TEXT_FILE_CHECK, sidecar_path_for, sidecar_writer
from ..fileio import atomic_path, remove_stale_temps
from .engines import make_encoder
from .options import VOCAB_HELP, WEIGHTS_HELP, engine_options, output_options, pipeline_options
from .pipeline import iter_embeddings
from .sharding import ChunkedRun, config_fingerprint, current_rank, file_stamp
from .workers import start_pool


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
    rank: int = 0
    world: int = 1
    reused_rows: int = 0
    stale_chunks: int = 0

    def lines(self):
        if self.rank:
            return [f"rank {self.rank} of {self.world}: done (rank 0 writes {self.output_file})"]
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        out = [f"rows read: {self.rows}, written: {self.written}, skipped: {sum(self.skipped.values())}",
               f"distinct images encoded: {self.images_encoded} (re-used for {self.images_reused} more rows)",
               f"time: {self.seconds:.1f} s, {rate:.2f} pairs/s",
               f"embeddings: {self.output_file}" + (f" (+ {self.sidecar_file})" if self.sidecar_file else "")]
        if self.world > 1:
            out.append(f"ranks: {self.world} (rank 0's summary; every rank embedded its share of the chunks)")
        if self.reused_rows:
            out.append(f"resumed: reused {self.reused_rows} rows embedded by an earlier run")
        if self.stale_chunks:
            out.append(f"refused {self.stale_chunks} chunk(s) of an earlier run with another input, config or "
                       f"weights")
        for reason, count in sorted(self.skipped.items()):
            out.append(f"  skipped {count} row(s): {reason}")
        if self.bad_row_log:
            out.append(f"skipped rows listed in {self.bad_row_log}")
        return out


def format_vector(vec):
    # str() of a float32 gives the shortest text that reads back to the same float32, as the official file has.
    return " ".join(map(str, vec))


def check_inputs(cfg, need_weights=True):
    """Name the missing file and what to do, before any work starts."""
    checks = [("init_from_params", WEIGHTS_HELP), ("vocab_file", VOCAB_HELP),
              ("test_file", "Set test_file to a UTF-8 TSV of text \\t image_id \\t base64 image rows (or a folder of "
                            "*.tsv shards, or a glob)."),
              ("text_model_config", "Use packages/ernie_base_3.0/ernie_config.base.json from this repository.")]
    for key, help_text in checks:
        path = cfg[key]
        if key == "init_from_params" and (cfg.inference_model_dir and cfg.engine == "paddle_inference"
                                          or not need_weights):
            continue
        shards = key == "test_file" and (os.path.isdir(path) or any(ch in path for ch in "*?["))
        if not shards and not os.path.isfile(path):  # (a folder of *.tsv shards or a glob is checked when read)
            raise InputError(f"{key}: file not found: {path}. {help_text}")
    if cfg.inference_model_dir and cfg.engine == "paddle_inference" and not os.path.isdir(cfg.inference_model_dir):
        raise InputError(f"inference_model_dir: directory not found: {cfg.inference_model_dir}. Export the "
                         f"towers first: python -m ernievil2 export CONFIG -o inference_model_dir=DIR")


def check_special_tokens(cfg, tokenizer):
    """The config's special-token ids must be the vocabulary's."""
    for key, actual in (("pad_token", tokenizer.pad_id), ("cls_token", tokenizer.cls_id),
                        ("sep_token", tokenizer.sep_id), ("mask_token", tokenizer.mask_id)):
        if cfg[key] != actual:
            raise InputError(f"{key}: the config says {cfg[key]} but {cfg.vocab_file} has id {actual}")


def run_inference(cfg, encoder=None):
    """run_infer.sh: embed every row of cfg.test_file into cfg.output_file (+ sidecar); returns a Summary.

    The rows are embedded in chunks (infer.sharding): this process's share when launched as several ranks,
    reusing the chunks an interrupted run of the same input, config and weights left; rank 0 then writes the
    outputs.  cfg: a loaded inference config (options.load_infer_config); `encoder` (tests) replaces the
    configured one."""
    check_inputs(cfg, need_weights=encoder is None)
    start = time.time()
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    check_special_tokens(cfg, tokenizer)
    out_opts, pipe_opts = output_options(cfg), pipeline_options(cfg)
    index = RowIndex(out_opts.test_file, what="test_file")
    rank, world = current_rank()
    stamp = config_fingerprint(cfg, [file_stamp(f) for f in index.files])
    run = ChunkedRun(out_opts.output_file, stamp, len(index), cfg.chunk_rows, rank, world)
    summary = Summary(output_file=out_opts.output_file, rank=rank, world=world)
    summary.stale_chunks, todo, summary.reused_rows = run.plan()
    try:
        if todo:
            _embed_chunks(run, todo, index, cfg, encoder, tokenizer, pipe_opts, out_opts.progress)
        if rank == 0:
            run.wait_for_all()
            _merge(run, out_opts, summary)
            run.remove()
    finally:
        run.remove_if_empty()
    summary.seconds = time.time() - start
    return summary


def _embed_chunks(run, chunks, index, cfg, encoder, tokenizer, options, show_progress):
    pool = start_pool(options)  # first: the workers load the vocabulary while the model loads here
    progress = _progress(show_progress, total=sum(run.rows(c)[1] - run.rows(c)[0] for c in chunks))
    try:
        encoder = encoder or make_encoder(engine_options(cfg))
        for chunk in chunks:
            first, stop = run.rows(chunk)
            rows = (parse_row(raw, path, line) for path, line, raw in index.iter_raw(first, stop))
            stats, policy = Summary(), BadRowPolicy(options.on_bad_row)

            def fill(writer):
                for row, text_emb, image_emb in iter_embeddings(rows, options, encoder, tokenizer, policy, stats,
                                                                progress, pool):
                    writer.add(text=text_emb[None], image=image_emb[None], image_ids=[row.image_id])
                return {"rows": stats.rows, "written": stats.written, "images_encoded": stats.images_encoded,
                        "skipped": [[b.path, b.line, b.reason] for b in policy.skipped]}
            run.write_chunk(chunk, ("text", "image"), ("image_ids",), fill, done=chunks.index(chunk) + 1)
    finally:
        progress.close()
        pool.terminate()
        pool.join()


def _merge(run, out_opts, summary):
    """Rank 0: the chunks, in order, into the official text file, the .npz sidecar and the bad-row log."""
    remove_stale_temps(out_opts.output_file)
    policy = BadRowPolicy("skip", out_opts.bad_row_log or f"{out_opts.output_file}.skipped.txt")
    sidecar_path = sidecar_path_for(out_opts.output_file) if out_opts.write_sidecar else None
    if sidecar_path:
        remove_stale_temps(sidecar_path)
    sidecar = sidecar_writer(sidecar_path) if sidecar_path else None
    try:
        with atomic_path(out_opts.output_file) as tmp_out, open(tmp_out, "wb") as out:
            size, crc = 0, 0  # of the bytes written, for the sidecar's check (no second read of the file)
            for chunk in range(run.count):
                arrays, meta = run.load(chunk)
                text, image, ids = arrays["text"], arrays["image"], [str(i) for i in arrays["image_ids"]]
                block = "".join(f"{format_vector(t)}\t{format_vector(i)}\t{k}\n"
                                for t, i, k in zip(text, image, ids)).encode("utf-8")
                out.write(block)
                size, crc = size + len(block), zlib.crc32(block, crc)
                if sidecar and ids:
                    sidecar.add(text=text, image=image, image_ids=ids)
                summary.rows += meta["rows"]
                summary.written += meta["written"]
                summary.images_encoded += meta["images_encoded"]
                policy.skipped += [BadRow(*bad) for bad in meta["skipped"]]
            if sidecar:
                sidecar.finish(extra={TEXT_FILE_CHECK: np.array([size, crc], np.int64)})
                summary.sidecar_file = sidecar_path
        policy.close()
    finally:
        if sidecar:
            sidecar.cleanup()
    summary.images_reused = summary.written - summary.images_encoded
    summary.skipped = dict(policy.reason_counts())
    summary.bad_row_log = policy.log_path if policy.skipped else ""


def embed_file(path, options, encoder):
    """Embed the TSV `path` into memory (the trainer's dev evaluation): (text [N,D], image [N,D], image_ids).
    options: PipelineOptions."""
    tokenizer = ErnieTokenizer.from_file(options.vocab_file)
    policy = BadRowPolicy(options.on_bad_row)
    texts, images, ids = [], [], []
    for row, t, i in iter_embeddings(read_rows(path), options, encoder, tokenizer, policy, Summary()):
        texts.append(t)
        images.append(i)
        ids.append(row.image_id)
    if not ids:
        raise InputError(f"{path}: no usable rows to embed")
    return np.stack(texts), np.stack(images), ids


def _progress(enabled, total=None):
    from tqdm import tqdm
    return tqdm(total=total, unit="pair", desc="embedding", disable=not enabled, dynamic_ncols=True,
                mininterval=1.0)
