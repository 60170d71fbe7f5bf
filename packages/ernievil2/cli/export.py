"""`python -m ernievil2 export CONFIG [--onnx]`: export the towers for Paddle Inference (optionally ONNX)."""
import argparse
import os
import sys

from ..errors import ConfigError, ExportError, InputError
from .common import guarded, parse_with_overrides


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 export",
        description="Export the image and text towers for Paddle Inference (engine: paddle_inference).")
    parser.add_argument("config", help="inference YAML: init_from_params, vision_model, text_model_config, "
                                       "image_size and inference_model_dir are used")
    parser.add_argument("--onnx", action="store_true", help="also write <tower>/model.onnx with paddle2onnx")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the check of the exported towers against the eager model")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        cfg = _export(args, overrides)
        if args.onnx:
            _export_onnx(cfg.inference_model_dir, args.opset)

    return guarded(run)


def _export(args, overrides):
    """Export the towers the config describes and check them against the eager model; returns the config."""
    from ..infer.export_cache import load_model
    from ..infer.options import engine_options, load_infer_config
    from ..infer.predictor import PredictorEncoder
    from ..interop.export import MIN_COSINE, compare_with_eager, export_towers
    cfg = load_infer_config(args.config, overrides)
    options = engine_options(cfg)
    if not options.inference_model_dir:
        raise ConfigError(f"{args.config}: inference_model_dir is not set (add -o inference_model_dir=DIR)")
    for key, path in (("init_from_params", options.weights), ("text_model_config", options.text_model_config)):
        if not os.path.isfile(path):
            raise InputError(f"{key}: file not found: {path}")
    model = load_model(options)
    export_towers(model, options.inference_model_dir, image_size=options.image_size,
                  extra_meta={"source_weights": os.path.abspath(options.weights)})
    print(f"exported the image and text towers to {options.inference_model_dir}")
    if not args.no_verify:
        encoder = PredictorEncoder(options.inference_model_dir, device="cpu", cpu_threads=options.cpu_threads)
        checks = compare_with_eager(model, encoder)
        print("exported vs eager, smallest cosine: "
              + ", ".join(f"{k} {v['cosine']:.7f}" for k, v in checks.items()))
        bad = [k for k, v in checks.items() if not (v["cosine"] >= MIN_COSINE and v["norm_error"] < 1e-4)]
        if bad:
            raise ExportError(f"the exported {' and '.join(bad)} tower(s) disagree with the eager model (cosine "
                              f"below {MIN_COSINE} or embeddings not L2-normalised)")
    return cfg


def _export_onnx(model_dir, opset):
    from ..interop.export import export_onnx
    try:
        import paddle2onnx  # noqa: F401
    except ImportError:
        print("note: paddle2onnx is not installed, so no ONNX files were written (pip install paddle2onnx)",
              file=sys.stderr)
        return
    try:
        written = export_onnx(model_dir, opset=opset)
    except Exception as e:  # noqa: BLE001 - paddle2onnx reports unsupported ops and checker failures in assorted ways
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {e}") from e
    for tower, path in written.items():
        print(f"onnx ({tower}): {path}")
