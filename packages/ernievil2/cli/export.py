"""`python -m ernievil2 export`: the towers for Paddle Inference (--format paddle, the default; optionally with
their ONNX copies, --onnx), or as a deployable ONNX bundle (--format onnx --out DIR: interop.onnx_bundle)."""
import argparse
import os
import sys

from ..errors import ConfigError, ExportError, InputError
from .common import guarded, parse_with_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 export",
        description="Export the image and text towers: for Paddle Inference (engine: paddle_inference), or as "
                    "ONNX files for ONNX Runtime / TensorRT (--format onnx).")
    parser.add_argument("config", help="inference YAML: init_from_params, vision_model, text_model_config, "
                                       "image_size, vocab_file, max_text_seqlen and inference_model_dir are used")
    parser.add_argument("--format", choices=("paddle", "onnx"), default="paddle",
                        help="paddle: a Paddle Inference model directory (inference_model_dir, or --out); "
                             "onnx: DIR/image.onnx, DIR/text.onnx, DIR/vocab.txt and DIR/onnx.json (--out DIR)")
    parser.add_argument("--out", metavar="DIR", help="output directory (required for --format onnx)")
    parser.add_argument("--onnx", action="store_true",
                        help="--format paddle: also write <tower>/model.onnx with paddle2onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of the exported towers against the eager model")
    args, overrides = parse_with_overrides(parser, argv)
    if args.out:
        overrides = [*overrides, ("inference_model_dir", args.out)]
    if args.format == "onnx" and not args.out:
        parser.error("--format onnx needs --out DIR")
    return guarded(lambda: _export_onnx_bundle(args, overrides) if args.format == "onnx"
                   else _export_paddle(args, overrides))


def _load(args, overrides):
    from ..infer.export_cache import load_model
    from ..infer.options import engine_options, load_infer_config
    cfg = load_infer_config(args.config, overrides)
    if not cfg.inference_model_dir:
        raise ConfigError(f"{args.config}: inference_model_dir is not set (add -o inference_model_dir=DIR or --out)")
    for key in ("init_from_params", "text_model_config"):
        if not os.path.isfile(cfg[key]):
            raise InputError(f"{key}: file not found: {cfg[key]}")
    return cfg, load_model(engine_options(cfg))


def _verify(model, encoder):
    from ..interop.export import MIN_COSINE, compare_with_eager
    checks = compare_with_eager(model, encoder)
    print("exported vs eager, smallest cosine: " + ", ".join(f"{k} {v['cosine']:.7f}" for k, v in checks.items()))
    bad = [k for k, v in checks.items() if not (v["cosine"] >= MIN_COSINE and v["norm_error"] < 1e-4)]
    if bad:
        raise ExportError(f"the exported {' and '.join(bad)} tower(s) disagree with the eager model (cosine "
                          f"below {MIN_COSINE} or embeddings not L2-normalised)")


def _export_paddle(args, overrides):
    from ..infer.predictor import PredictorEncoder
    from ..interop.export import export_towers
    cfg, model = _load(args, overrides)
    export_towers(model, cfg.inference_model_dir, image_size=cfg.image_size,
                  extra_meta={"source_weights": os.path.abspath(cfg.init_from_params)})
    print(f"exported the image and text towers to {cfg.inference_model_dir}")
    if not args.no_verify:
        _verify(model, PredictorEncoder(cfg.inference_model_dir, device="cpu", cpu_threads=cfg.cpu_threads))
    if args.onnx:
        _add_onnx_copies(cfg.inference_model_dir, args.opset)


def _add_onnx_copies(model_dir, opset):
    from ..interop.export import export_onnx
    try:
        import paddle2onnx  # noqa: F401
    except ImportError:
        print("note: paddle2onnx is not installed, so no ONNX files were written (pip install paddle2onnx)",
              file=sys.stderr)
        return
    try:
        written = export_onnx(model_dir, opset=opset)
    except Exception as e:  # paddle2onnx reports unsupported ops and checker failures in assorted ways
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    for tower, path in written.items():
        print(f"onnx ({tower}): {path}")


def _export_onnx_bundle(args, overrides):
    from ..interop.onnx_bundle import OnnxRuntimeEncoder, export_onnx_bundle
    cfg, model = _load(args, overrides)
    if cfg.image_size != model.config.vision.image_size:
        raise ConfigError(f"image_size {cfg.image_size} differs from the model's {model.config.vision.image_size} "
                          f"(its positional embeddings are sized for {model.config.vision.image_size})")
    if not os.path.isfile(cfg.vocab_file):
        raise InputError(f"vocab_file: file not found: {cfg.vocab_file}")
    meta = export_onnx_bundle(model, args.out, cfg.vocab_file, max_text_len=cfg.max_text_seqlen, opset=args.opset,
                              extra_meta={"source_weights": os.path.abspath(cfg.init_from_params)})
    for tower, info in meta["towers"].items():
        print(f"{tower}: {os.path.join(args.out, info['file'])}  ({info['summary']})")
    print(f"description: {os.path.join(args.out, 'onnx.json')}; vocabulary: {os.path.join(args.out, 'vocab.txt')}")
    if not args.no_verify:
        try:
            encoder = OnnxRuntimeEncoder(args.out, threads=cfg.cpu_threads)
        except ExportError as e:
            print(f"note: not verified ({e})", file=sys.stderr)
            return
        _verify(model, encoder)
