"""run_infer.sh: embed a TSV of text-image pairs into the official 3-column text file and its `.npz` sidecar.

Both outputs are written under temporary names and renamed only when complete; a run first removes the
temporaries that killed runs of the same output left behind.
"""
import os
import time
import zlib
from dataclasses import dataclass, field

import numpy as np

from ..data.tokenizer import ErnieTokenizer
from ..data.tsv import BadRowPolicy
from ..errors import InputError
from ..eval.sidecar import TEXT_FILE_CHECK, sidecar_path_for, sidecar_writer
from ..fileio import atomic_path, remove_stale_temps
from .engines import make_encoder
from .options import VOCAB_HELP, WEIGHTS_HELP, engine_options, output_options, pipeline_options
from .pipeline import iter_embeddings


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


def format_vector(vec):
    # str() of a float32 gives the shortest text that reads back to the same float32, as the official file has.
    return " ".join(map(str, vec))


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
    cfg: a loaded inference config (`options.load_infer_config`); `encoder` (tests) replaces the configured one."""
    check_inputs(cfg, need_weights=encoder is None)
    start = time.time()
    tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
    check_special_tokens(cfg, tokenizer)
    encoder = encoder or make_encoder(engine_options(cfg))
    out_opts, pipe_opts = output_options(cfg), pipeline_options(cfg)
    remove_stale_temps(out_opts.output_file)
    policy = BadRowPolicy(pipe_opts.on_bad_row, out_opts.bad_row_log or f"{out_opts.output_file}.skipped.txt")
    summary = Summary(output_file=out_opts.output_file)
    sidecar_path = sidecar_path_for(out_opts.output_file) if out_opts.write_sidecar else None
    if sidecar_path:
        remove_stale_temps(sidecar_path)
    sidecar = sidecar_writer(sidecar_path) if sidecar_path else None
    progress = _progress(out_opts.progress)
    rows = iter_embeddings(out_opts.test_file, pipe_opts, encoder, tokenizer, policy, summary, progress)
    try:
        with atomic_path(out_opts.output_file) as tmp_out, open(tmp_out, "wb") as out:
            size, crc = 0, 0  # of the bytes written, for the sidecar's check (no second read of the file)
            for row, text_emb, image_emb in rows:
                line = f"{format_vector(text_emb)}\t{format_vector(image_emb)}\t{row.image_id}\n".encode("utf-8")
                out.write(line)
                size, crc = size + len(line), zlib.crc32(line, crc)
                if sidecar:
                    sidecar.add(text=text_emb[None], image=image_emb[None], image_ids=[row.image_id])
            if sidecar:
                sidecar.finish(extra={TEXT_FILE_CHECK: np.array([size, crc], np.int64)})
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


def embed_file(path, options, encoder):
    """Embed the TSV `path` into memory (the trainer's dev evaluation): (text [N,D], image [N,D], image_ids).
    options: PipelineOptions."""
    tokenizer = ErnieTokenizer.from_file(options.vocab_file)
    policy = BadRowPolicy(options.on_bad_row)
    texts, images, ids = [], [], []
    for row, t, i in iter_embeddings(path, options, encoder, tokenizer, policy, Summary()):
        texts.append(t)
        images.append(i)
        ids.append(row.image_id)
    if not ids:
        raise InputError(f"{path}: no usable rows to embed")
    return np.stack(texts), np.stack(images), ids


def _progress(enabled):
    from tqdm import tqdm
    return tqdm(unit="pair", desc="embedding", disable=not enabled, dynamic_ncols=True, mininterval=1.0)
