"""Command-line entry points behind run_infer.sh and run_train.sh.  Errors the user can fix
are printed as one line on stderr with exit status 2 (bad config/input) instead of a traceback."""
import argparse
import os
import sys


def _fail(message, code=2):
    if os.environ.get("ERNIEVIL2_DEBUG"):
        raise  # noqa: PLE0704 - re-raise the exception being handled, with its traceback
    print(f"error: {message}", file=sys.stderr)
    return code


def _parse(argv, prog, description, config_help):
    """CONFIG plus `-o key=value` overrides -> (config path, overrides)."""
    from .config import ConfigError, split_cli_overrides
    parser = argparse.ArgumentParser(prog=prog, description=description)
    try:
        argv, overrides = split_cli_overrides(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        parser.error(str(e))
    parser.add_argument("config", help=config_help)
    return parser.parse_args(argv).config, overrides


def infer_main(argv=None):
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .inference import InferenceError, load_infer_config, run_inference
    from .tokenizer import VocabError
    from .tsv import BadRowError

    config, overrides = _parse(argv, "run_infer.sh", "Embed a text/image TSV with ERNIE-ViL 2.0.",
                               "YAML config (the official ernie_vil_base.yaml works unchanged)")
    try:
        cfg = load_infer_config(config, overrides)
        summary = run_inference(cfg)
    except BadRowError as e:
        return _fail(f"{e} (set on_bad_row: skip to skip such rows); no output written", 1)
    except (ConfigError, InferenceError, CheckpointError, VocabError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    for line in summary.lines():
        print(line)
    return 0


def train_main(argv=None):
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .inference import InferenceError
    from .tokenizer import VocabError
    from .train_config import load_train_config
    from .trainer import TrainingError, run_training
    from .tsv import BadRowError

    config, overrides = _parse(argv, "run_train.sh", "Multi-view contrastive training.",
                               "training YAML, e.g. packages/configs/demo.yaml")
    try:
        cfg = load_train_config(config, overrides)
        trainer, _ = run_training(cfg)
    except BadRowError as e:
        return _fail(f"{e} (set data.on_bad_row: skip to skip such rows)", 1)
    except TrainingError as e:
        return _fail(str(e), 1)
    except (ConfigError, InferenceError, CheckpointError, VocabError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    if trainer.is_main and cfg.data.test_file:
        return _embed_and_evaluate_test(trainer)
    return 0


def _visible_gpus():
    try:
        import paddle
        return paddle.device.cuda.device_count() if paddle.is_compiled_with_cuda() else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup: plan for the CPU; the trainer reports the device
        return 0


def launch_plan_main(argv=None):
    """For run_train.sh: print how to start training (see train_config.launch_plan), one word per line."""
    from .config import ConfigError
    from .train_config import launch_plan, load_train_config

    config, overrides = _parse(argv, "run_train.sh", "Print the launch plan.", "training YAML")
    try:
        cfg = load_train_config(config, overrides)
        plan = launch_plan(cfg, _visible_gpus())
    except (ConfigError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    print("\n".join(plan))
    return 0


def _embed_and_evaluate_test(trainer):
    """After training: embed the test split with the final weights through the same entry points as
    run_infer.sh and eval_retri.py, and print the recall table."""
    from .evaluation import main as eval_main
    infer_yaml = os.path.join(trainer.out_dir, "infer.yaml")
    device = "gpu" if trainer.device == "gpu" else "cpu"
    print(f"embedding the test split: bash run_infer.sh {device} {infer_yaml}", flush=True)
    code = infer_main([infer_yaml, "-o", f"device={device}", "-o", "progress=false"])
    if code:
        return code
    embeddings = os.path.join(trainer.out_dir, "test_embeddings.out")
    print(f"python eval_retri.py {embeddings}", flush=True)
    return eval_main([embeddings])
