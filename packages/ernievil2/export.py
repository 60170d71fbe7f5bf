"""Exporting the two towers for Paddle Inference, and the predictor-backed encoder behind `engine: paddle_inference`.

`export_towers` traces each tower with `paddle.jit.save` into an inference-model directory:

    OUT/image/model.{json,pdiparams}   pixels float32 [batch, 3, S, S] -> L2-normalised embeddings [batch, D]
    OUT/text/model.{json,pdiparams}    input_ids int64 [batch, length] -> L2-normalised embeddings [batch, D]
    OUT/export.json                    dims, image size, pad id, maximum text length, the model config

Batch size and text length are dynamic.  (Paddle 3 writes the program as `model.json`, older versions as
`model.pdmodel`; both are found.)  `PredictorEncoder` serves such a directory through `paddle.inference`
(oneDNN on CPU; GPU with optional TensorRT, fp16 if asked) with the interface of `encoders.EagerEncoder`.

    python -m ernievil2.export CONFIG [-o key=value ...] [--onnx] [--no-verify]

reads an inference YAML, builds the model from `init_from_params`, exports to `inference_model_dir`, checks the
exported towers against the eager model, and with `--onnx` also writes `image/model.onnx` and `text/model.onnx`
through paddle2onnx when it is installed.
"""
import argparse
import contextlib
import json
import os
import shutil
import sys
import warnings

import numpy as np

from .fileio import atomic_write

META_FILE = "export.json"
FORMAT = "ernievil2-inference-model"
FORMAT_VERSION = 1
TOWERS = ("image", "text")
INPUTS = {"image": ("pixels", "float32"), "text": ("input_ids", "int64")}
MIN_COSINE = 0.99999  # exported vs eager, the bar the project holds every engine to
# oneDNN keeps primitives, and a copy of the tower's weights reordered for them, per distinct input shape:
# ~350 MB per shape for the Base towers (measured), so a text batch of every caption length would cost GBs.
# On the CPU the predictor therefore only ever sees a few shapes (`fixed_shapes`): images one at a time (the
# per-image cost is the same from batch 1 to 4 here), texts in blocks of `text_batch` rows padded to one of at
# most TEXT_WIDTHS widths (16/32/48 for the usual max length 48).  The cache bound is a backstop above that.
ONEDNN_SHAPE_CACHE = 8
TEXT_WIDTHS = 4


class InferenceModelError(ValueError):
    """An inference-model directory that cannot be used; the message names it and what is wrong."""


# ---------------------------------------------------------------- export

def _tower_layers():
    import paddle.nn as nn
    import paddle.nn.functional as F

    class ImageTower(nn.Layer):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, pixels):
            return F.normalize(self.visual(pixels), axis=-1)

    class TextTower(nn.Layer):
        def __init__(self, text_model):
            super().__init__()
            self.text_model = text_model

        def forward(self, input_ids):
            return F.normalize(self.text_model(input_ids), axis=-1)

    return ImageTower, TextTower


def export_towers(model, out_dir, image_size=None, towers=TOWERS, extra_meta=None):
    """jit.save the towers of an ErnieViL2 `model` into `out_dir` (replaced as a whole, never left half-written).
    image_size defaults to the model's; the positional embeddings fix it, so any other value is an error.
    Returns the export metadata (also written to out_dir/export.json)."""
    import paddle
    from paddle.static import InputSpec

    cfg = model.config
    size = int(image_size or cfg.vision.image_size)
    if size != cfg.vision.image_size:
        raise ValueError(f"image_size {size} differs from the model's {cfg.vision.image_size} (its positional "
                         f"embeddings are sized for {cfg.vision.image_size})")
    unknown = sorted(set(towers) - set(TOWERS))
    if unknown or not towers:
        raise ValueError(f"towers: expected some of {', '.join(TOWERS)}, got {list(towers)}")
    _check_replaceable(out_dir)
    ImageTower, TextTower = _tower_layers()
    specs = {"image": (ImageTower(model.visual), [None, 3, size, size]),
             "text": (TextTower(model.text_model), [None, None])}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "embed_dim": model.embed_dim,
            "image_size": size, "pad_token_id": cfg.text.pad_token_id,
            "max_text_len": cfg.text.max_position_embeddings, "vocab_size": cfg.text.vocab_size,
            "normalized": True, "paddle_version": paddle.__version__, "towers": {},
            "model_config": {"vision": cfg.vision.to_dict(), "text": cfg.text.to_dict()}}
    meta.update(extra_meta or {})
    was_training = model.training
    model.eval()
    try:
        with _staging_dir(out_dir) as stage:
            for tower in towers:
                layer, shape = specs[tower]
                name, dtype = INPUTS[tower]
                layer.eval()
                static = paddle.jit.to_static(layer, input_spec=[InputSpec(shape, dtype, name)], full_graph=True)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # PIR tracing warns about tensor attributes it cannot know
                    try:
                        paddle.jit.save(static, os.path.join(stage, tower, "model"))
                    except Exception as e:  # dy2static raises many kinds; say which tower, keep the cause
                        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
                        raise RuntimeError(f"{out_dir}: paddle.jit.save of the {tower} tower failed: "
                                           f"{lines[-1] if lines else type(e).__name__}") from e
                program = _program_file(os.path.join(stage, tower))
                meta["towers"][tower] = {
                    "model_file": f"{tower}/{program}", "params_file": f"{tower}/model.pdiparams",
                    "input": {"name": name, "dtype": dtype, "shape": [-1 if d is None else d for d in shape]},
                    "output_dim": model.embed_dim}
            _write_meta(stage, meta)
    finally:
        if was_training:
            model.train()
    return meta


def _program_file(tower_dir):
    for name in ("model.json", "model.pdmodel"):
        if os.path.isfile(os.path.join(tower_dir, name)):
            return name
    raise RuntimeError(f"{tower_dir}: paddle.jit.save wrote no model.json or model.pdmodel")


def _write_meta(directory, meta):
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"

    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(os.path.join(directory, META_FILE), write)


def _check_replaceable(out_dir):
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, META_FILE)):
            raise ValueError(f"{out_dir}: exists and is not an exported ERNIE-ViL 2.0 model (no {META_FILE}); "
                             f"refusing to replace it. Choose an empty or new inference_model_dir.")


@contextlib.contextmanager
def _staging_dir(out_dir):
    """Build the export in a sibling directory, then swap it in: readers see the old export or the new one."""
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    stage = os.path.join(parent, f".{os.path.basename(out_dir)}.partial{os.getpid()}")
    old = os.path.join(parent, f".{os.path.basename(out_dir)}.old{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage)
    try:
        yield stage
        _check_replaceable(out_dir)
        if os.path.exists(out_dir):
            os.replace(out_dir, old)
        os.replace(stage, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------- Paddle Inference

def read_export_meta(model_dir):
    """export.json of an inference-model directory, checked; InferenceModelError naming the problem."""
    hint = "Export the towers first: python -m ernievil2.export CONFIG -o inference_model_dir=DIR"
    if not model_dir:
        raise InferenceModelError(f"inference_model_dir is not set. {hint}")
    if not os.path.isdir(model_dir):
        raise InferenceModelError(f"{model_dir}: inference model directory not found. {hint}")
    path = os.path.join(model_dir, META_FILE)
    if not os.path.isfile(path):
        raise InferenceModelError(f"{model_dir}: not an exported ERNIE-ViL 2.0 model ({META_FILE} missing). {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InferenceModelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise InferenceModelError(f"{path}: not an ERNIE-ViL 2.0 export description (format is not {FORMAT!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise InferenceModelError(f"{path}: written by a newer version (format_version {meta['format_version']}, "
                                  f"this code reads {FORMAT_VERSION})")
    for key in ("embed_dim", "image_size", "max_text_len", "towers"):
        if key not in meta:
            raise InferenceModelError(f"{path}: '{key}' is missing")
    return meta


def fixed_text_width(width, longest):
    """The width a text batch of `width` tokens is padded to when texts are at most `longest` tokens: a multiple
    of a step (itself a multiple of 16) that splits `longest` into at most TEXT_WIDTHS widths."""
    step = 16 * -(-longest // (16 * TEXT_WIDTHS))
    return min(-(-width // step) * step, max(longest, width))


class PredictorEncoder:
    """Token ids / pixels -> L2-normalised float32 numpy embeddings through Paddle Inference predictors,
    with the interface of encoders.EagerEncoder."""

    def __init__(self, model_dir, device="cpu", cpu_threads=0, use_tensorrt=False, precision="fp32",
                 towers=TOWERS, use_onednn=True, gpu_id=0, trt_max_batch=64, fixed_shapes=None, text_batch=10,
                 text_max_len=None):
        import paddle
        if device not in ("cpu", "gpu"):
            raise ValueError(f"device must be cpu or gpu, got {device!r}")
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 (GPU) or bf16 (CPU), got {precision!r}")
        if device == "gpu" and not paddle.is_compiled_with_cuda():
            raise ValueError("device gpu: this Paddle build has no CUDA support (use device cpu)")
        if device == "cpu" and (use_tensorrt or precision == "fp16"):
            raise ValueError("TensorRT and fp16 need device gpu; on the CPU the predictor runs fp32 or bf16 "
                             "with oneDNN")
        if device == "gpu" and precision == "bf16":
            raise ValueError("precision bf16 is for the CPU (oneDNN); on the GPU use fp16 or fp32")
        if precision == "bf16":
            from .cpu_runtime import cpu_has_bf16
            if not use_onednn or not cpu_has_bf16():
                raise ValueError("precision bf16 needs oneDNN and a CPU with AVX512-BF16 or AMX-BF16 (see the "
                                 "flags in /proc/cpuinfo); use precision fp32")
        self.model_dir = model_dir
        self.meta = read_export_meta(model_dir)
        self.embed_dim = int(self.meta["embed_dim"])
        self.image_size = int(self.meta["image_size"])
        self.max_text_len = int(self.meta["max_text_len"])
        self.vocab_size = self.meta.get("vocab_size")
        self.pad_id = int(self.meta.get("pad_token_id", 0))
        self.device = device
        # A few fixed input shapes for oneDNN (see ONEDNN_SHAPE_CACHE); outputs are the same either way.
        self.fixed_shapes = (device == "cpu" and use_onednn) if fixed_shapes is None else bool(fixed_shapes)
        if text_batch < 1:
            raise ValueError(f"text_batch must be >= 1, got {text_batch}")
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
        out = []
        for start in range(0, len(ids), self.text_batch):
            chunk = ids[start:start + self.text_batch]
            block = np.full((self.text_batch, width), self.pad_id, np.int64)
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


# ---------------------------------------------------------------- ONNX

def export_onnx(model_dir, opset=17, towers=None):
    """Convert the exported towers with paddle2onnx into <tower>/model.onnx; returns the written paths.
    Raises ImportError when paddle2onnx is not installed."""
    import paddle2onnx
    meta = read_export_meta(model_dir)
    written = {}
    for tower in towers or list(meta["towers"]):
        info = meta["towers"][tower]
        target = os.path.join(model_dir, tower, "model.onnx")

        def convert(tmp, info=info):
            paddle2onnx.export(os.path.join(model_dir, info["model_file"]),
                               os.path.join(model_dir, info["params_file"]), tmp, opset_version=opset,
                               enable_onnx_checker=True, enable_optimize=False,
                               # The default optimizer (polygraphy) sets POLYGRAPHY_AUTOINSTALL_DEPS and pip-installs
                               # packages into the running environment (it upgraded numpy past our pin): never.
                               optimize_tool="none")
        atomic_write(target, convert)
        info["onnx_file"] = f"{tower}/model.onnx"
        written[tower] = target
    meta["onnx_opset"] = opset
    _write_meta(model_dir, meta)
    return written


# ---------------------------------------------------------------- checks and the command line

def compare_with_eager(model, encoder, batch=2, text_len=12, seed=0):
    """Per tower, on random inputs: the smallest cosine between eager and exported embeddings, and the largest
    distance of an exported embedding's norm from 1 (the export must be L2-normalised)."""
    import paddle
    rng = np.random.default_rng(seed)
    cfg = model.config
    inputs = {}
    if "image" in encoder._predictors:
        s = cfg.vision.image_size
        inputs["image"] = rng.standard_normal((batch, 3, s, s)).astype(np.float32)
    if "text" in encoder._predictors:
        length = min(text_len, cfg.text.max_position_embeddings)
        ids = rng.integers(4, cfg.text.vocab_size, (batch, length)).astype(np.int64)
        ids[:, 0] = 1
        ids[0, max(2, length // 2):] = cfg.text.pad_token_id  # one padded text
        inputs["text"] = ids
    results = {}
    model.eval()
    for tower, array in inputs.items():
        with paddle.no_grad():
            ref = getattr(model, f"encode_{tower}")(paddle.to_tensor(array), normalize=True).numpy()
        got = getattr(encoder, f"encode_{tower}")(array)
        norms = np.linalg.norm(got, axis=-1)
        cosine = (ref * got).sum(-1) / np.maximum(norms * np.linalg.norm(ref, axis=-1), 1e-12)
        results[tower] = {"cosine": float(cosine.min()), "norm_error": float(np.abs(norms - 1).max())}
    return results


def main(argv=None):
    from .checkpoint import CheckpointError
    from .cli import _fail
    from .config import ConfigError, split_cli_overrides
    from .inference import load_infer_config

    try:
        argv, overrides = split_cli_overrides(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        return _fail(str(e))
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2.export",
        description="Export the image and text towers for Paddle Inference (engine: paddle_inference).")
    parser.add_argument("config", help="inference YAML: init_from_params, vision_model, text_model_config, "
                                       "image_size and inference_model_dir are used")
    parser.add_argument("--onnx", action="store_true", help="also write <tower>/model.onnx with paddle2onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of the exported towers against the eager model")
    args = parser.parse_args(argv)
    try:
        cfg = load_infer_config(args.config, overrides)
        if not cfg.inference_model_dir:
            raise ValueError(f"{args.config}: inference_model_dir is not set (add -o inference_model_dir=DIR)")
        for key in ("init_from_params", "text_model_config"):
            if not os.path.isfile(cfg[key]):
                raise ValueError(f"{key}: file not found: {cfg[key]}")
        from .encoders import build_model
        model = build_model(cfg.vision_model, cfg.text_model_config, cfg.init_from_params)
        export_towers(model, cfg.inference_model_dir, image_size=cfg.image_size,
                      extra_meta={"source_weights": os.path.abspath(cfg.init_from_params)})
        print(f"exported the image and text towers to {cfg.inference_model_dir}")
        if not args.no_verify:
            encoder = PredictorEncoder(cfg.inference_model_dir, device="cpu", cpu_threads=cfg.cpu_threads)
            checks = compare_with_eager(model, encoder)
            print("exported vs eager, smallest cosine: "
                  + ", ".join(f"{k} {v['cosine']:.7f}" for k, v in checks.items()))
            bad = [k for k, v in checks.items() if not (v["cosine"] >= MIN_COSINE and v["norm_error"] < 1e-4)]
            if bad:
                print(f"error: the exported {' and '.join(bad)} tower(s) disagree with the eager model (cosine "
                      f"below {MIN_COSINE} or embeddings not L2-normalised)", file=sys.stderr)
                return 1
    except (ConfigError, CheckpointError, InferenceModelError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    except RuntimeError as e:
        return _fail(str(e), 1)
    if args.onnx:
        try:
            import paddle2onnx  # noqa: F401
        except ImportError:
            print("note: paddle2onnx is not installed, so no ONNX files were written (pip install paddle2onnx)",
                  file=sys.stderr)
            return 0
        try:
            written = export_onnx(cfg.inference_model_dir, opset=args.opset)
        except Exception as e:  # paddle2onnx reports unsupported ops and checker failures in assorted ways
            return _fail(f"ONNX export failed: {type(e).__name__}: {e}", 1)
        for tower, path in written.items():
            print(f"onnx ({tower}): {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
