"""The engine plan: the device, engine, precision and export folder (with its export.json) an encoder runs,
resolved once from EngineOptions and handed to the backends (engines.build_encoder).

engine auto: eager on the GPU; on the CPU OpenVINO when it is installed (and for int8), else Paddle Inference
(oneDNN; faster than eager, docs: "Measured results").  precision auto: the fastest mode this CPU supports, tried
in order (int8 on AMX-INT8/AVX512-VNNI with OpenVINO + NNCF and calibration rows, bf16 on AVX512-BF16/AMX, then
fp32); `plan_engine` returns one plan per mode to try.
"""
import os
from dataclasses import dataclass
from typing import Optional

from .. import runtime
from ..data.tsv import expand_sources
from ..errors import ConfigError, InputError
from ..interop.export import read_export_meta
from .export_cache import cached_export
from .openvino_engine import available as openvino_available
from .options import WEIGHTS_HELP, EngineOptions
from .quantize import available as int8_available


@dataclass(frozen=True)
class EnginePlan:
    """What one encoder runs: everything resolved (no "auto" left)."""
    device: str                    # cpu | gpu
    engine: str                    # eager | paddle_inference | openvino
    precision: str                 # fp32 | bf16 | int8
    model_dir: Optional[str]       # the exported towers (None for eager)
    meta: Optional[dict]           # model_dir's export.json, read once here (do not modify)
    options: EngineOptions         # what was asked (weights, model, threads, calibration rows)

    def describe(self):
        """What a run's numbers depend on beyond the config (for chunk fingerprints and provenance)."""
        return {"device": self.device, "engine": self.engine, "precision": self.precision}


def plan_engine(options):
    """The plans to try for EngineOptions, fastest first (one unless precision is auto); ConfigError / InputError
    for combinations that cannot run.  Exports the towers once per weights file when an engine needs them."""
    device = "cpu" if options.device == "cpu" else runtime.resolve_device(options.device)
    modes = _precisions(options.precision, device, options.engine, options.calibration)
    engines = [_engine(options.engine, device, precision) for precision in modes]
    for engine, precision in zip(engines, modes):
        allowed = ("openvino",) if precision == "int8" else ("paddle_inference", "openvino")
        if precision != "fp32" and (engine not in allowed or device != "cpu"):
            raise ConfigError(f"precision {precision} is for engine {' or '.join(allowed)} on the CPU (this run: "
                              f"engine {engine} on {device}); use precision fp32")
    needs_weights = "eager" in engines or not options.inference_model_dir
    if needs_weights and not (options.weights and os.path.isfile(options.weights)):
        raise InputError(f"init_from_params: file not found: {options.weights}. {WEIGHTS_HELP}")
    model_dir = meta = None
    if any(engine != "eager" for engine in engines):
        model_dir = options.inference_model_dir or cached_export(options, device, onnx="openvino" in engines)
        meta = read_export_meta(model_dir)
    return [EnginePlan(device, engine, precision, None if engine == "eager" else model_dir,
                       None if engine == "eager" else meta, options) for engine, precision in zip(engines, modes)]


def _precisions(requested, device, engine, calibration):
    """The modes `precision` may use, fastest first."""
    if requested != "auto":
        return [requested]
    if device != "cpu" or engine == "eager":
        return ["fp32"]
    modes = []
    if engine in ("auto", "openvino") and runtime.cpu_has_int8() and int8_available() and _exists(calibration.files):
        modes.append("int8")
    if runtime.cpu_has_bf16():
        modes.append("bf16")
    return modes + ["fp32"]


def _exists(sources):
    try:
        return bool(sources) and bool(expand_sources(sources))
    except InputError:
        return False


def _engine(requested, device, precision):
    if requested != "auto":
        return requested
    if device != "cpu":
        return "eager"
    if precision == "int8":
        return "openvino"  # the only int8 engine: says what to install when it is missing
    # Where installed, OpenVINO is faster in every precision, smaller and quicker to start, and its fp32 gives the
    # same embeddings (docs: "CPU precision").
    return "openvino" if openvino_available() else "paddle_inference"
