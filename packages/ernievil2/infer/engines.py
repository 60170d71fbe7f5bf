"""Engines: token ids and pixels -> L2-normalised numpy embeddings, with eager Paddle (`EagerEncoder`) or
Paddle Inference (`predictor.PredictorEncoder`), and the choice between them (`make_encoder`)."""
import hashlib
import json
import logging
import os

from .. import runtime
from ..data.tsv import expand_sources
from ..errors import ConfigError, InputError, RuntimeSupportError
from ..fileio import cache_home
from ..interop.export import export_towers, read_export_meta
from ..runtime import resolve_device, set_cpu_threads
from .fidelity import checked
from .openvino_engine import available as openvino_available
from .options import WEIGHTS_HELP
from .quantize import available as int8_available
from .quantize import held_out_samples, int8_encoder

logger = logging.getLogger(__name__)


class EagerEncoder:
    """A dual encoder run eagerly (no export); the trainer's dev evaluation uses its live model this way."""

    def __init__(self, model):
        import paddle
        self.paddle = paddle
        self.model = model
        model.eval()
        self.precision = "fp32"

    @property
    def embed_dim(self):
        return self.model.embed_dim

    @property
    def logit_scale(self):
        """exp(t) of the model's temperature: zero-shot scores are cosine x this."""
        return float(self.model.logit_scale().item())

    def encode_text(self, ids):
        with self.paddle.no_grad():
            return self.model.encode_text(self.paddle.to_tensor(ids, dtype="int64"), normalize=True).numpy()

    def encode_image(self, pixels):
        with self.paddle.no_grad():
            return self.model.encode_image(self.paddle.to_tensor(pixels, dtype="float32"), normalize=True).numpy()


def load_model(options):
    """The eager dual encoder of EngineOptions, with its weights (any known layout) loaded."""
    from ..interop.convert import load_any_layout  # these import Paddle, which the OpenVINO engine never needs
    from ..model.dual_encoder import build_model
    model = build_model(options.vision_model, options.text_model_config, initialize=not options.weights)
    if options.weights:
        load_any_layout(model, options.weights)
    return model


def make_encoder(options):
    """The encoder EngineOptions ask for.

    engine auto: eager on the GPU; on the CPU OpenVINO when it is installed (and for int8), else Paddle Inference
    (oneDNN; faster than eager, README: "Measured results").  The towers are exported once per weights file into
    a cache.  precision auto: the fastest mode this CPU supports whose fidelity to
    fp32 passes (int8 on AMX-INT8/AVX512-VNNI with OpenVINO + NNCF and calibration rows, bf16 on
    AVX512-BF16/AMX, else fp32); an approximate mode is checked against fp32 before use."""
    device = "cpu" if options.device == "cpu" else resolve_device(options.device)
    candidates = _precisions(options.precision, device, options.engine, options.calibration)
    for i, precision in enumerate(candidates):
        engine = _engine(options.engine, device, precision)
        allowed = ("openvino",) if precision == "int8" else ("paddle_inference", "openvino")
        if precision != "fp32" and (engine not in allowed or device != "cpu"):
            raise ConfigError(f"precision {precision} is for engine {' or '.join(allowed)} on the CPU (this run: "
                              f"engine {engine} on {device}); use precision fp32")
        needs_weights = engine == "eager" or not options.inference_model_dir
        if needs_weights and not (options.weights and os.path.isfile(options.weights)):
            raise InputError(f"init_from_params: file not found: {options.weights}. {WEIGHTS_HELP}")
        try:
            return _build(engine, device, precision, options)
        except RuntimeSupportError as e:
            if options.precision != "auto" or precision == candidates[-1]:
                raise
            logger.info("note: precision auto: %s is not usable here (%s); trying %s", precision, e,
                        candidates[i + 1])
    raise AssertionError("unreachable: the last candidate returns or raises")


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
    # same embeddings (README: "CPU precision").
    return "openvino" if openvino_available() else "paddle_inference"


def _build(engine, device, precision, options):
    if engine != "openvino":
        _prepare_paddle(device, options.cpu_threads)
    if engine == "eager":
        return EagerEncoder(load_model(options))
    model_dir = options.inference_model_dir or cached_export(options)
    if engine == "openvino":
        from .openvino_engine import OpenVinoEncoder

        def make(mode):
            if mode == "int8":
                return int8_encoder(model_dir, options.calibration, options.cpu_threads, options.batch_size)
            return OpenVinoEncoder(model_dir, precision=mode, cpu_threads=options.cpu_threads,
                                   image_batch=options.batch_size)
    else:
        from .predictor import PredictorEncoder

        def make(mode):
            return PredictorEncoder(model_dir, device=device, cpu_threads=options.cpu_threads, precision=mode,
                                    text_batch=options.batch_size, text_max_len=options.max_text_len)
    encoder = make(precision)
    if precision == "fp32":
        return encoder
    extra = (lambda: held_out_samples(options.calibration)) if precision == "int8" else None
    return checked(encoder, lambda: make("fp32"), model_dir, engine, precision, extra)


def _prepare_paddle(device, cpu_threads):
    """Paddle's device and CPU threads, set only when Paddle runs: importing it is ~3 s of an OpenVINO start."""
    resolve_device(device, warn=False)
    if device == "cpu":
        set_cpu_threads(cpu_threads)


EXPORT_CACHE_VERSION = 2  # bumped when exports gain something older ones lack (2: the logit scale)


def cached_export(options):
    """Export the towers of the options' model once and reuse them: keyed by the weights file (path, size,
    mtime) and the model configuration."""
    weights = os.path.abspath(options.weights)
    st = os.stat(weights)
    text_config = None
    if options.text_model_config:
        with open(options.text_model_config, encoding="utf-8") as f:
            text_config = f.read()
    key = json.dumps([EXPORT_CACHE_VERSION, weights, st.st_size, st.st_mtime_ns, options.vision_model, text_config,
                      options.image_size], sort_keys=True, default=str)
    out_dir = os.path.join(cache_home(), "exported", hashlib.sha1(key.encode()).hexdigest()[:16])
    try:
        read_export_meta(out_dir)
        return out_dir
    except (OSError, ValueError):
        pass
    logger.info("exporting the towers for Paddle Inference into %s (once per weights file)", out_dir)
    _prepare_paddle("cpu" if options.device == "cpu" else resolve_device(options.device, warn=False),
                    options.cpu_threads)
    model = load_model(options)
    export_towers(model, out_dir, extra_meta={"source_weights": weights})
    return out_dir
