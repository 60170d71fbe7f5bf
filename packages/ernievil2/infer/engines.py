"""Engines: token ids and pixels -> L2-normalised numpy embeddings, with eager Paddle (`EagerEncoder`) or
Paddle Inference (`predictor.PredictorEncoder`) or OpenVINO (`openvino_engine.OpenVinoEncoder`), built on the plan
infer.plan resolves (`make_encoder`)."""
import logging

from ..errors import RuntimeSupportError
from .export_cache import load_model, prepare_paddle
from .fidelity import checked
from .plan import plan_engine
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


def make_encoder(options):
    """The encoder EngineOptions ask for, on the plan infer.plan resolves (device, engine, precision, export).  An
    approximate precision is checked against fp32 before use; with precision auto a mode that is not usable here
    gives way to the next.  The encoder's `plan` says what runs."""
    plans = plan_engine(options)
    for i, plan in enumerate(plans):
        try:
            return build_encoder(plan)
        except RuntimeSupportError as e:
            if i == len(plans) - 1:
                raise
            logger.warning("precision auto: %s is not usable here (%s); trying %s", plan.precision, e,
                           plans[i + 1].precision)
    raise AssertionError("unreachable: the last plan returns or raises")


def build_encoder(plan):
    """The encoder of one EnginePlan."""
    options = plan.options
    if plan.engine != "openvino":
        prepare_paddle(plan.device, options.cpu_threads)
    if plan.engine == "eager":
        encoder = EagerEncoder(load_model(options))
        encoder.plan = plan
        return encoder
    if plan.engine == "openvino":
        from .openvino_engine import OpenVinoEncoder

        def make(mode):
            if mode == "int8":
                return int8_encoder(plan.model_dir, options.calibration, options.cpu_threads, options.batch_size,
                                    meta=plan.meta)
            return OpenVinoEncoder(plan.model_dir, precision=mode, cpu_threads=options.cpu_threads,
                                   image_batch=options.batch_size, meta=plan.meta)
    else:
        from .predictor import PredictorEncoder

        def make(mode):
            return PredictorEncoder(plan.model_dir, device=plan.device, cpu_threads=options.cpu_threads,
                                    precision=mode, text_batch=options.batch_size, text_max_len=options.max_text_len,
                                    meta=plan.meta)
    encoder = make(plan.precision)
    if plan.precision != "fp32":
        extra = (lambda: held_out_samples(options.calibration)) if plan.precision == "int8" else None
        encoder = checked(encoder, lambda: make("fp32"), plan.model_dir, plan.engine, plan.precision, extra)
    encoder.plan = plan
    return encoder
