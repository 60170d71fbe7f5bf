"""Inference options: the YAML schema of run_infer.sh (the official keys keep their meaning; ours are optional),
and the typed options the rest of the package takes, built from such a config or directly (the trainer, the
Python API): `EngineOptions` (which model, where and how it runs), `PipelineOptions` (tokenising, decoding,
batching, bad rows) and `OutputOptions` (files written)."""
from dataclasses import dataclass, fields
from typing import Optional, Union

from ..config import REQUIRED, Field, Section, load_config, output_only_keys
from ..data.images import DEFAULT_MAX_PIXELS
from ..model.configs import VISION_KEYS, check_text_length, vision_config

WEIGHTS_HELP = ("Download the official ERNIE-ViL 2.0 Base weights (ERNIE_VIL2_BASE_ViT.pdparams, linked from the "
                "official Research/ERNIE-ViL2 readme) or use final.pdparams from run_train.sh, then set "
                "init_from_params.")
VOCAB_HELP = ("Use the ERNIE 3.0 base vocab.txt from the official release (packages/ernie_base_3.0/vocab.txt there) "
              "and set vocab_file.")

def _check_inference(cfg):
    vision_config(cfg.vision_model, key="vision_model")
    check_text_length(cfg.text_model_config, cfg.max_text_seqlen, "max_text_seqlen")


# Every key of the official ernie_vil_base.yaml keeps its meaning; the rest are ours, with defaults.  This is the
# one declaration of a key: loading checks it, docs/configuration.md is generated from it (config-docs), and the
# chunk fingerprint leaves out the keys with affects_output=False (OUTPUT_ONLY_KEYS).
INFER_SCHEMA = Section({
    "input_dtype": Field("int64", choices=("int64",), doc="data type of the input ids (official key)"),
    "device": Field("gpu", choices=("gpu", "cpu"), affects_output=False,
                    doc="falls back to cpu with a warning on a CPU-only Paddle"),
    "infer_batch_size": Field(10, minimum=1, doc="rows per batch; texts are padded to the longest in their batch"),
    "max_text_seqlen": Field(48, minimum=3, doc="tokens per text, [CLS] and [SEP] included"),
    "vocab_file": Field(REQUIRED, type=str, doc="token \\t id lines, or one token per line"),
    "text_model_config": Field("./packages/ernie_base_3.0/ernie_config.base.json",
                               doc="the text tower's ernie_config JSON"),
    "test_file": Field(REQUIRED, type=str, affects_output=False,
                       doc="UTF-8 TSV: text \\t image_id \\t base64 image [\\t object tags]"),
    "output_file": Field(REQUIRED, type=str, affects_output=False,
                         doc="the official 3-column embeddings file (a .npz sidecar is written beside it)"),
    "init_from_params": Field(REQUIRED, type=str, doc="model weights: the official .pdparams or run_train.sh's "
                                                      "final.pdparams"),
    "pad_token": Field(0, minimum=0, doc="checked against the vocab"),
    "cls_token": Field(1, minimum=0, doc="checked against the vocab"),
    "sep_token": Field(2, minimum=0, doc="checked against the vocab"),
    "mask_token": Field(3, minimum=0, doc="checked against the vocab"),
    "unk_token": Field(None, type=int, doc="stale in the official YAML and unused: [UNK] comes from the vocab"),
    # --- our additions ---
    "vision_model": Field("vit_b16", type=(str, dict), doc="vit_b16, vit_l14, or a mapping of vision tower keys",
                          keys=VISION_KEYS, string_key="preset"),
    "image_size": Field(224, minimum=1, doc="square input side in pixels"),
    "engine": Field("auto", choices=("auto", "eager", "paddle_inference", "openvino"), affects_output=False,
                    doc="auto: openvino when installed, else paddle_inference on the CPU; eager on the GPU (the "
                        "engine that actually ran is part of a chunk's fingerprint)"),
    "inference_model_dir": Field(None, type=str, doc="exported towers; null: export init_from_params once"),
    "precision": Field("fp32", choices=("fp32", "bf16", "int8", "auto"),
                       doc="fp32 reproduces the official embeddings; bf16 (CPUs with AVX512-BF16/AMX) and int8 "
                           "(openvino + NNCF, calibrated on calibration_file) are faster and approximate; auto: "
                           "the fastest mode whose fidelity to fp32 passes on this CPU"),
    "calibration_file": Field(None, type=(str, list), doc="int8: TSV rows (text, image_id, base64 image) to "
                                                           "calibrate on; null: test_file"),
    "calibration_rows": Field(300, minimum=1, doc="int8: rows of calibration_file used"),
    "num_workers": Field(1, minimum=0, affects_output=False,
                         doc="processes decoding images and tokenising texts; 0: inline"),
    "prefetch_batches": Field(4, minimum=1, affects_output=False, doc="batches prepared ahead of the model"),
    "text_sort_window": Field(128, minimum=1, doc="rows whose captions are grouped by length before the texts are "
                                                  "batched (each batch pads to its longest); 1: input order"),
    "on_bad_row": Field("error", choices=("error", "skip"),
                        doc="error: stop at the first bad row; skip: leave it out and log it"),
    "bad_row_log": Field(None, type=str, affects_output=False, doc="default: <output_file>.skipped.txt"),
    "write_sidecar": Field(True, affects_output=False, doc="also write <output_file>.npz (read by eval, index)"),
    "max_image_pixels": Field(DEFAULT_MAX_PIXELS, minimum=1, doc="larger images are bad rows"),
    "image_cache_size": Field(20000, minimum=1, doc="embeddings of repeated image ids kept"),
    "cpu_threads": Field(0, minimum=0, doc="math threads; 0: the cores divided among local ranks"),
    "progress": Field(True, affects_output=False, doc="progress line on stderr"),
    "chunk_rows": Field(10000, minimum=1, doc="rows per resumable chunk (and per share of a rank)"),
    "cpu_processes": Field(1, minimum=1, affects_output=False,
                           doc="CPU ranks run_infer.sh starts when given no launcher options"),
}, check=_check_inference, doc="run_infer.sh and every command that embeds (embed, zeroshot, search, serve)")

OUTPUT_ONLY_KEYS = output_only_keys(INFER_SCHEMA)


def load_infer_config(path, overrides=(), schema=INFER_SCHEMA):
    """An inference YAML (official keys + ours) with `-o key=value` overrides, checked."""
    return load_config(schema, path, overrides)


# The commands that embed something other than run_infer.sh's pairs file (embed, zeroshot, search, serve) take
# the same YAML; test_file and output_file are then optional, and embed and zeroshot add their own keys.
QUERY_SCHEMA = Section({**INFER_SCHEMA,
                        "test_file": Field(None, type=str, affects_output=False, doc=INFER_SCHEMA["test_file"].doc),
                        "output_file": Field(None, type=str, affects_output=False, doc="the file written")},
                       check=_check_inference,
                       doc="search and serve: the inference keys; test_file and output_file optional")
EMBED_SCHEMA = Section({
    **QUERY_SCHEMA,
    "images": Field(None, type=str, doc="a folder of images (recursive) or an image_id \\t base64 TSV"),
    "texts": Field(None, type=str, doc="a text file (one query per line) or JSONL with text_id and text"),
}, check=_check_inference, doc="python -m ernievil2 embed: the inference keys plus what to embed")
ZEROSHOT_SCHEMA = Section({
    **QUERY_SCHEMA,
    "images": Field(None, type=str, doc="a folder, an image_id \\t base64 TSV, or label \\t image_id \\t base64"),
    "labels": Field(None, type=str, doc="one class name per line"),
    "templates": Field(None, type=str, doc="one prompt per line with {} for the class name; null: built-in set"),
    "top_k": Field(5, minimum=1, doc="classes listed per image"),
}, check=_check_inference,
    doc="python -m ernievil2 zeroshot: the inference keys plus images, labels and prompt templates")

TAG_SCHEMA = Section({
    **EMBED_SCHEMA,
    "tag": Section({
        "vocabulary": Field(None, type=str, doc="one tag name per line (# comments); null: the built-in list"),
        "templates": Field(None, type=str, doc="prompt templates, one per line with {}; null: zeroshot's set"),
        "max_tags": Field(5, type=int, minimum=1, doc="at most this many tags per image"),
        "threshold": Field(0.05, type=(int, float), minimum=0, maximum=1,
                           doc="minimum softmax probability over the vocabulary (at the model's logit scale)"),
        "keep_embeddings": Field(False, affects_output=False,
                                 doc="keep <output_file>.embeddings.npz (re-tag without re-embedding)"),
    }, doc="the tag keys"),
}, check=_check_inference, doc="python -m ernievil2 tag: the embed keys plus the tag vocabulary and selection")


def load_query_config(path, overrides=(), schema=QUERY_SCHEMA):
    """An inference YAML for a command that does not read test_file (its own keys in `schema`)."""
    return load_infer_config(path, overrides, schema)


def _default(key):
    return INFER_SCHEMA[key].default


@dataclass(frozen=True)
class CalibrationOptions:
    """The rows precision int8 is calibrated on (infer.quantize), and how they become model inputs."""
    files: Union[str, list, None] = None       # TSV file(s), directory of shards or glob
    rows: int = _default("calibration_rows")
    vocab_file: Optional[str] = None
    max_text_len: int = _default("max_text_seqlen")
    image_size: int = _default("image_size")
    max_image_pixels: int = _default("max_image_pixels")


@dataclass(frozen=True)
class EngineOptions:
    """Which weights and model, on which device and engine (see `infer.engines.make_encoder`)."""
    weights: Optional[str] = None              # init_from_params; not needed with an inference_model_dir
    vision_model: Union[str, dict] = _default("vision_model")
    text_model_config: Optional[str] = None    # an ERNIE config JSON; None: ERNIE 3.0 base
    image_size: int = _default("image_size")
    device: str = "auto"                       # auto | gpu | cpu
    engine: str = _default("engine")
    precision: str = _default("precision")
    inference_model_dir: Optional[str] = None
    cpu_threads: int = _default("cpu_threads")
    batch_size: int = _default("infer_batch_size")  # rows per batch (the CPU predictor's text block, OpenVINO's
    #                                                 image batch)
    max_text_len: int = _default("max_text_seqlen")
    calibration: CalibrationOptions = CalibrationOptions()


@dataclass(frozen=True)
class PipelineOptions:
    """How rows become model inputs: tokenising, decoding, batching, worker processes, bad rows."""
    vocab_file: str
    max_text_len: int = _default("max_text_seqlen")
    image_size: int = _default("image_size")
    batch_size: int = _default("infer_batch_size")
    num_workers: int = _default("num_workers")
    prefetch_batches: int = _default("prefetch_batches")
    text_sort_window: int = _default("text_sort_window")
    image_cache_size: int = _default("image_cache_size")
    max_image_pixels: int = _default("max_image_pixels")
    on_bad_row: str = _default("on_bad_row")


@dataclass(frozen=True)
class OutputOptions:
    """What run_infer.sh reads and writes."""
    test_file: str
    output_file: str
    bad_row_log: Optional[str] = None          # default <output_file>.skipped.txt
    write_sidecar: bool = _default("write_sidecar")
    progress: bool = _default("progress")


# The YAML edge: an option whose YAML key has another (official) name.  Every other option field reads the key
# of its own name, so a new key needs only its Field above and, where typed options carry it, a field there.
YAML_KEYS = {"weights": "init_from_params", "max_text_len": "max_text_seqlen", "batch_size": "infer_batch_size"}


def _options(cls, cfg, **given):
    """An options dataclass from a loaded config: each field from its YAML key, except those `given`."""
    values = {f.name: cfg[YAML_KEYS.get(f.name, f.name)] for f in fields(cls) if f.name not in given}
    return cls(**values, **given)


def engine_options(cfg):
    return _options(EngineOptions, cfg, calibration=calibration_options(cfg))


def calibration_options(cfg):
    return _options(CalibrationOptions, cfg, files=cfg.calibration_file or cfg.test_file,
                    rows=cfg.calibration_rows)


def pipeline_options(cfg):
    return _options(PipelineOptions, cfg)


def output_options(cfg):
    return _options(OutputOptions, cfg)
