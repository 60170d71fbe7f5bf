"""`engine: paddle_inference`: the exported towers (interop.export) served through `paddle.inference`
(oneDNN on the CPU; the GPU with optional TensorRT, fp16 if asked), with the interface of engines.EagerEncoder.

On the CPU, oneDNN keeps primitives and a copy of a tower's weights reordered for them per distinct input
shape, so the predictor only ever sees a few shapes (`fixed_shapes`, see the README: "Memory on the CPU"):
images one at a time, texts one alone or in blocks of `text_batch` rows, padded to one of at most TEXT_WIDTHS
widths.  The shape-cache bound is a backstop above that.
"""
import os

import numpy as np

from .. import runtime
from ..errors import ConfigError, InferenceModelError, RuntimeSupportError
from ..interop.export import TOWERS, read_export_meta

ONEDNN_SHAPE_CACHE = 10  # 1 or text_batch rows x TEXT_WIDTHS widths, one image shape, and a spare
TEXT_WIDTHS = 4


def fixed_text_width(width, longest):
    """The width a text batch of `width` tokens is padded to when texts are at most `longest` tokens: a multiple
    of a step (itself a multiple of 16) that splits `longest` into at most TEXT_WIDTHS widths."""
    step = 16 * -(-longest // (16 * TEXT_WIDTHS))
    return min(-(-width // step) * step, max(longest, width))


class PredictorEncoder:
    """Token ids / pixels -> L2-normalised float32 numpy embeddings through Paddle Inference predictors,
    with the interface of engines.EagerEncoder."""

    def __init__(self, model_dir, device="cpu", cpu_threads=0, use_tensorrt=False, precision="fp32",
                 towers=TOWERS, use_onednn=True, gpu_id=0, trt_max_batch=64, fixed_shapes=None, text_batch=10,
                 text_max_len=None, meta=None):
        """meta: the export's export.json when the caller has read it already (infer.plan.EnginePlan)."""
        import paddle
        if device not in ("cpu", "gpu"):
            raise ConfigError(f"device must be cpu or gpu, got {device!r}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"precision must be fp32, fp16 (GPU) or bf16 (CPU), got {precision!r}")
        if device == "gpu" and not paddle.is_compiled_with_cuda():
            raise RuntimeSupportError("device gpu: this Paddle build has no CUDA support (use device cpu)")
        if device == "cpu" and (use_tensorrt or precision == "fp16"):
            raise ConfigError("TensorRT and fp16 need device gpu; on the CPU the predictor runs fp32 or bf16 "
                             "with oneDNN")
        if device == "gpu" and precision == "bf16":
            raise ConfigError("precision bf16 is for the CPU (oneDNN); on the GPU use fp16 or fp32")
        if precision == "bf16":
            if not use_onednn or not runtime.cpu_has_bf16():
                raise RuntimeSupportError("precision bf16 needs oneDNN and a CPU with AVX512-BF16 or AMX-BF16 (see the "
                                 "flags in /proc/cpuinfo); use precision fp32")
        self.model_dir = model_dir
        self.meta = meta if meta is not None else read_export_meta(model_dir)
        self.embed_dim = int(self.meta["embed_dim"])
        self.image_size = int(self.meta["image_size"])
        self.max_text_len = int(self.meta["max_text_len"])
        self.vocab_size = self.meta.get("vocab_size")
        self.pad_id = int(self.meta.get("pad_token_id", 0))
        self.device = device
        self.precision = precision
        # A few fixed input shapes for oneDNN (see ONEDNN_SHAPE_CACHE); outputs are the same either way.
        self.fixed_shapes = (device == "cpu" and use_onednn) if fixed_shapes is None else bool(fixed_shapes)
        if text_batch < 1:
            raise ConfigError(f"text_batch must be >= 1, got {text_batch}")
        self.text_batch = int(text_batch)
        self.text_longest = min(int(text_max_len or 48), self.max_text_len)  # the tokenizer's max length
        self.cpu_threads = cpu_threads or os.cpu_count() or 1
        self._options = dict(use_tensorrt=use_tensorrt, precision=precision, use_onednn=use_onednn,
                             gpu_id=gpu_id, trt_max_batch=trt_max_batch)
        self._predictors = {}
        for tower in towers:
            if tower not in self.meta["towers"]:
                raise InferenceModelError(f"{model_dir}: has no {tower} tower (exported: "
                                          f"{', '.join(self.meta['towers']) or 'none'})")
            self._predictors[tower] = self._create(tower)

    @property
    def logit_scale(self):
        """exp(t) of the exported model's temperature, or None for an export older than this field."""
        value = self.meta.get("logit_scale")
        return None if value is None else float(value)

    @property
    def towers(self):
        """The towers this encoder runs ("image", "text")."""
        return tuple(self._predictors)

    def _create(self, tower):
        from paddle import inference
        info = self.meta["towers"][tower]
        files = [os.path.join(self.model_dir, info[k]) for k in ("model_file", "params_file")]
        for path in files:
            if not os.path.isfile(path):
                raise InferenceModelError(f"{self.model_dir}: {tower} tower file missing: {path}; export again")
        opts = self._options
        config = inference.Config(*files)
        if self.device == "gpu":
            half = opts["precision"] == "fp16"
            precision = inference.PrecisionType.Half if half else inference.PrecisionType.Float32
            if opts["use_tensorrt"]:
                config.enable_use_gpu(256, opts["gpu_id"])
                config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=opts["trt_max_batch"],
                                              min_subgraph_size=3, precision_mode=precision, use_static=False,
                                              use_calib_mode=False)
                name = info["input"]["name"]
                config.set_trt_dynamic_shape_info(*self._trt_shapes(tower, name))
            else:
                config.enable_use_gpu(256, opts["gpu_id"], precision)
            config.enable_memory_optim()
        else:
            # No enable_memory_optim here: with oneDNN, Paddle 3.3 fails to create the predictor ("Not find
            # predictor_id 0 and pass_name memory_optimize_pass"), and Paddle's own CI leaves it off for oneDNN.
            config.disable_gpu()
            if opts["use_onednn"]:
                config.enable_mkldnn()
                config.set_mkldnn_cache_capacity(ONEDNN_SHAPE_CACHE)
                if opts["precision"] == "bf16":
                    config.enable_mkldnn_bfloat16()
            else:
                config.disable_mkldnn()  # Paddle 3 turns oneDNN on by default for CPU predictors
            config.set_cpu_math_library_num_threads(self.cpu_threads)
        config.disable_glog_info()
        try:
            predictor = inference.create_predictor(config)
        except Exception as e:  # the C++ side raises assorted errors for unreadable programs or parameters
            raise InferenceModelError(f"{self.model_dir}: cannot load the {tower} tower "
                                      f"({type(e).__name__}: {str(e).strip()[-500:]})") from None
        return predictor, predictor.get_input_names()[0], predictor.get_output_names()[0]

    def _trt_shapes(self, tower, name):
        b = self._options["trt_max_batch"]
        if tower == "image":
            s = self.image_size
            return {name: [1, 3, s, s]}, {name: [b, 3, s, s]}, {name: [min(b, 10), 3, s, s]}
        length = min(self.max_text_len, 512)
        return {name: [1, 1]}, {name: [b, length]}, {name: [min(b, 10), min(length, 48)]}

    def _run(self, tower, array):
        if tower not in self._predictors:
            raise ValueError(f"this encoder was created without the {tower} tower")
        if array.shape[0] == 0:
            return np.zeros((0, self.embed_dim), np.float32)
        predictor, input_name, output_name = self._predictors[tower]
        handle = predictor.get_input_handle(input_name)
        handle.reshape(list(array.shape))
        handle.copy_from_cpu(np.ascontiguousarray(array))
        predictor.run()
        return np.asarray(predictor.get_output_handle(output_name).copy_to_cpu(), dtype=np.float32)

    def encode_text(self, ids):
        ids = np.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"encode_text: expected integer token ids [batch, length], got {ids.dtype} "
                             f"{list(ids.shape)}")
        if ids.shape[1] == 0 or ids.shape[1] > self.max_text_len:
            raise ValueError(f"encode_text: text length {ids.shape[1]} is outside 1..{self.max_text_len}")
        if ids.size and (ids.min() < 0 or (self.vocab_size and ids.max() >= self.vocab_size)):
            raise ValueError(f"encode_text: token ids must lie in 0..{self.vocab_size - 1}, got "
                             f"{ids.min()}..{ids.max()}")
        ids = ids.astype(np.int64, copy=False)
        if not self.fixed_shapes or not len(ids):
            return self._run("text", ids)
        width = fixed_text_width(ids.shape[1], self.text_longest)
        # One text (a search query) runs alone: a block of text_batch rows would cost text_batch texts.  So the
        # shapes are 1 or text_batch rows by at most TEXT_WIDTHS widths.
        rows = 1 if len(ids) == 1 else self.text_batch
        out = []
        for start in range(0, len(ids), rows):
            chunk = ids[start:start + rows]
            block = np.full((rows, width), self.pad_id, np.int64)
            block[:, :chunk.shape[1]] = chunk[0]  # filler rows repeat a real text (never an all-padding row)
            block[:len(chunk), :chunk.shape[1]] = chunk
            out.append(self._run("text", block)[:len(chunk)])
        return np.concatenate(out)

    def encode_image(self, pixels):
        pixels = np.asarray(pixels)
        s = self.image_size
        if pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"encode_image: expected pixels [batch, 3, {s}, {s}], got {list(pixels.shape)}")
        pixels = pixels.astype(np.float32, copy=False)
        if not self.fixed_shapes or len(pixels) <= 1:
            return self._run("image", pixels)
        return np.concatenate([self._run("image", pixels[i:i + 1]) for i in range(len(pixels))])
