"""Inference options: the YAML schema of run_infer.sh (the official keys keep their meaning; ours are optional),
and the typed options the rest of the package takes, built from such a config or directly (the trainer, the
Python API): `EngineOptions` (which model, where and how it runs), `PipelineOptions` (tokenising, decoding,
batching, bad rows) and `OutputOptions` (files written)."""
from dataclasses import dataclass
from typing import Optional, Union

from ..config import REQUIRED, Field, load_config
from ..data.images import DEFAULT_MAX_PIXELS
from ..errors import ConfigError

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
    "engine": Field("auto", choices=("auto", "eager", "paddle_inference", "openvino")),
    "inference_model_dir": Field(None, type=str, doc="exported towers; null: export init_from_params once"),
    "precision": Field("fp32", choices=("fp32", "bf16", "int8", "auto"),
                       doc="fp32 reproduces the official embeddings; bf16 (CPUs with AVX512-BF16/AMX) and int8 "
                           "(openvino + NNCF, calibrated on calibration_file) are faster and approximate; auto: "
                           "the fastest mode whose fidelity to fp32 passes on this CPU"),
    "calibration_file": Field(None, type=(str, list), doc="int8: TSV rows (text, image_id, base64 image) to "
                                                           "calibrate on; run_infer.sh's default: test_file"),
    "calibration_rows": Field(300, type=int, doc="int8: rows of calibration_file used"),
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
    "chunk_rows": Field(10000, type=int, doc="rows per resumable chunk (and per share of a rank)"),
    "cpu_processes": Field(1, type=int, doc="CPU ranks run_infer.sh starts when given no launcher options"),
}


def load_infer_config(path, overrides=(), schema=INFER_SCHEMA):
    """An inference YAML (official keys + ours) with `-o key=value` overrides, checked."""
    cfg = load_config(schema, path, overrides)
    for key in ("infer_batch_size", "max_text_seqlen", "image_size", "image_cache_size", "prefetch_batches",
                "text_sort_window", "chunk_rows", "cpu_processes", "calibration_rows"):
        if cfg[key] < 1:
            raise ConfigError(f"{path}: '{key}' must be >= 1, got {cfg[key]}")
    if cfg.max_text_seqlen < 3:
        raise ConfigError(f"{path}: 'max_text_seqlen' must leave room for [CLS] and [SEP], got {cfg.max_text_seqlen}")
    return cfg


# The commands that embed something other than run_infer.sh's pairs file (embed, zeroshot, search, serve) take
# the same YAML; test_file and output_file are then optional.
QUERY_SCHEMA = {**INFER_SCHEMA, "test_file": Field(None, type=str), "output_file": Field(None, type=str)}


def load_query_config(path, overrides=(), schema=QUERY_SCHEMA):
    """An inference YAML for a command that does not read test_file (its own keys in `schema`)."""
    return load_infer_config(path, overrides, schema)


@dataclass(frozen=True)
class CalibrationOptions:
    """The rows precision int8 is calibrated on (infer.quantize), and how they become model inputs."""
    files: Union[str, list, None] = None       # TSV file(s), directory of shards or glob
    rows: int = 300
    vocab_file: Optional[str] = None
    max_text_len: int = 48
    image_size: int = 224
    max_image_pixels: int = DEFAULT_MAX_PIXELS


@dataclass(frozen=True)
class EngineOptions:
    """Which weights and model, on which device and engine (see `infer.engines.make_encoder`)."""
    weights: Optional[str] = None              # init_from_params; not needed with an inference_model_dir
    vision_model: Union[str, dict] = "vit_b16"
    text_model_config: Optional[str] = None    # an ERNIE config JSON; None: ERNIE 3.0 base
    image_size: int = 224
    device: str = "auto"                       # auto | gpu | cpu
    engine: str = "auto"                       # auto | eager | paddle_inference | openvino
    precision: str = "fp32"                    # fp32 | bf16 | int8 | auto
    inference_model_dir: Optional[str] = None
    cpu_threads: int = 0
    text_batch: int = 10                       # rows per text block of the CPU predictor's fixed shapes
    max_text_len: int = 48
    calibration: CalibrationOptions = CalibrationOptions()


@dataclass(frozen=True)
class PipelineOptions:
    """How rows become model inputs: tokenising, decoding, batching, worker processes, bad rows."""
    vocab_file: str
    max_text_len: int = 48
    image_size: int = 224
    batch_size: int = 10
    num_workers: int = 1
    prefetch_batches: int = 4
    text_sort_window: int = 128
    image_cache_size: int = 20000
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    on_bad_row: str = "error"


@dataclass(frozen=True)
class OutputOptions:
    """What run_infer.sh reads and writes."""
    test_file: str
    output_file: str
    bad_row_log: Optional[str] = None          # default <output_file>.skipped.txt
    write_sidecar: bool = True
    progress: bool = True


def engine_options(cfg):
    return EngineOptions(weights=cfg.init_from_params, vision_model=cfg.vision_model,
                         text_model_config=cfg.text_model_config, image_size=cfg.image_size, device=cfg.device,
                         engine=cfg.engine, precision=cfg.precision, inference_model_dir=cfg.inference_model_dir,
                         cpu_threads=cfg.cpu_threads, text_batch=cfg.infer_batch_size,
                         max_text_len=cfg.max_text_seqlen, calibration=calibration_options(cfg))


def calibration_options(cfg):
    return CalibrationOptions(files=cfg.calibration_file or cfg.test_file, rows=cfg.calibration_rows,
                              vocab_file=cfg.vocab_file, max_text_len=cfg.max_text_seqlen,
                              image_size=cfg.image_size, max_image_pixels=cfg.max_image_pixels)


def pipeline_options(cfg):
    return PipelineOptions(vocab_file=cfg.vocab_file, max_text_len=cfg.max_text_seqlen, image_size=cfg.image_size,
                           batch_size=cfg.infer_batch_size, num_workers=cfg.num_workers,
                           prefetch_batches=cfg.prefetch_batches, text_sort_window=cfg.text_sort_window,
                           image_cache_size=cfg.image_cache_size, max_image_pixels=cfg.max_image_pixels,
                           on_bad_row=cfg.on_bad_row)


def output_options(cfg):
    return OutputOptions(test_file=cfg.test_file, output_file=cfg.output_file, bad_row_log=cfg.bad_row_log,
                         write_sidecar=cfg.write_sidecar, progress=cfg.progress)
