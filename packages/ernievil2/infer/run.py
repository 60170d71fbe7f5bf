"""run_infer.sh: embed a TSV of text-image pairs into the official 3-column text file and its `.npz` sidecar.

A chunked job (infer.job); both outputs are written under temporary names and renamed only when complete.
"""
import os
import zlib
from dataclasses import dataclass

import numpy as np

from ..data.row_index import RowIndex
from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRowPolicy, parse_row, read_rows
from ..errors import InputError
from ..eval.sidecar import TEXT_FILE_CHECK, sidecar_path_for, sidecar_writer
from ..fileio import AtomicFile, remove_stale_temps
from .engines import make_encoder
from .job import ChunkedJob, run_job
from .options import VOCAB_HELP, WEIGHTS_HELP, engine_options, output_options, pipeline_options
from .pipeline import iter_embeddings
from .sharding import config_fingerprint, content_hash


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
    """run_infer.sh: embed every row of cfg.test_file into cfg.output_file (+ sidecar); returns a ChunkSummary.

    A chunked job (infer.job): this process's share of the chunks when launched as several ranks, reusing the
    chunks an interrupted run of the same input, config and weights left; rank 0 then writes the outputs.
    cfg: a loaded inference config (options.load_infer_config); `encoder` (tests) replaces the configured one."""
    check_inputs(cfg, need_weights=encoder is None)
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    check_special_tokens(cfg, tokenizer)
    return run_job(PairsJob(cfg, tokenizer, encoder))


class PairsJob(ChunkedJob):
    """run_infer.sh's rows -> text and image embeddings; merged into the official text file and its sidecar."""
    noun = "row"
    matrices, strings = ("text", "image"), ("image_ids",)

    def __init__(self, cfg, tokenizer, encoder=None):
        out = output_options(cfg)
        self.index = RowIndex(out.test_file, what="test_file")
        super().__init__(out.output_file, config_fingerprint(cfg, [content_hash([f]) for f in self.index.files]),
                         len(self.index), cfg.chunk_rows, pipeline_options(cfg), out.bad_row_log, out.progress)
        self.cfg, self.tokenizer, self.encoder = cfg, tokenizer, encoder
        self.sidecar_path = sidecar_path_for(out.output_file) if out.write_sidecar else None

    def prepare(self):
        self.encoder = self.encoder or make_encoder(engine_options(self.cfg))

    def fill(self, first, stop, writer, policy, counts, progress, pool):
        rows = (parse_row(raw, path, line) for path, line, raw in self.index.iter_raw(first, stop))
        stats = _Stats()
        for row, text_emb, image_emb in iter_embeddings(rows, self.options, self.encoder, self.tokenizer, policy,
                                                        stats, progress, pool):
            writer.add(text=text_emb[None], image=image_emb[None], image_ids=[row.image_id])
        counts["images_encoded"] = stats.images_encoded
        return stats.rows, stats.written

    def start_merge(self):
        if self.sidecar_path:
            remove_stale_temps(self.sidecar_path)
        self.sidecar = sidecar_writer(self.sidecar_path) if self.sidecar_path else None
        self.out = AtomicFile(self.output_file)
        self.size, self.crc = 0, 0  # of the bytes written, for the sidecar's check (no second read of the file)

    def merge_chunk(self, arrays):
        text, image, ids = arrays["text"], arrays["image"], [str(i) for i in arrays["image_ids"]]
        block = "".join(f"{format_vector(t)}\t{format_vector(i)}\t{k}\n"
                        for t, i, k in zip(text, image, ids)).encode("utf-8")
        self.out.write(block)
        self.size, self.crc = self.size + len(block), zlib.crc32(block, self.crc)
        if self.sidecar and ids:
            self.sidecar.add(text=text, image=image, image_ids=ids)

    def finish_merge(self, summary):
        if self.sidecar:
            self.sidecar.finish(extra={TEXT_FILE_CHECK: np.array([self.size, self.crc], np.int64)})
            summary.also_written.append(self.sidecar_path)
        self.out.publish()
        encoded = summary.counts.get("images_encoded", 0)
        summary.notes.append(f"distinct images encoded: {encoded} (re-used for {summary.written - encoded} more "
                             f"rows)")

    def abort_merge(self):
        if self.sidecar:
            self.sidecar.cleanup()
        self.out.discard()  # (after publish: nothing left to remove)


@dataclass
class _Stats:
    """What iter_embeddings counts."""
    rows: int = 0
    written: int = 0
    images_encoded: int = 0
    images_reused: int = 0


def embed_file(path, options, encoder):
    """Embed the TSV `path` into memory (the trainer's dev evaluation): (text [N,D], image [N,D], image_ids).
    options: PipelineOptions."""
    tokenizer = ErnieTokenizer.from_file(options.vocab_file)
    policy = BadRowPolicy(options.on_bad_row)
    texts, images, ids = [], [], []
    for row, t, i in iter_embeddings(read_rows(path), options, encoder, tokenizer, policy, _Stats()):
        texts.append(t)
        images.append(i)
        ids.append(row.image_id)
    if not ids:
        raise InputError(f"{path}: no usable rows to embed")
    return np.stack(texts), np.stack(images), ids
