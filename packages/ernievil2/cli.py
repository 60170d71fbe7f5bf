"""Command-line entry points behind run_infer.sh (and, later, the other scripts).  Errors the user can fix
are printed as one line on stderr with exit status 2 (bad config/input) instead of a traceback."""
import argparse
import os
import sys


def _fail(message, code=2):
    if os.environ.get("ERNIEVIL2_DEBUG"):
        raise  # noqa: PLE0704 - re-raise the exception being handled, with its traceback
    print(f"error: {message}", file=sys.stderr)
    return code


def infer_main(argv=None):
    from .checkpoint import CheckpointError
    from .config import ConfigError, split_cli_overrides
    from .inference import InferenceError, load_infer_config, run_inference
    from .tokenizer import VocabError
    from .tsv import BadRowError

    argv, overrides = split_cli_overrides(list(sys.argv[1:] if argv is None else argv))
    parser = argparse.ArgumentParser(prog="run_infer.sh", description="Embed a text/image TSV with ERNIE-ViL 2.0.")
    parser.add_argument("config", help="YAML config (the official ernie_vil_base.yaml works unchanged)")
    args = parser.parse_args(argv)
    try:
        cfg = load_infer_config(args.config, overrides)
        summary = run_inference(cfg)
    except BadRowError as e:
        return _fail(f"{e} (set on_bad_row: skip to skip such rows); no output written", 1)
    except (ConfigError, InferenceError, CheckpointError, VocabError, FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    for line in summary.lines():
        print(line)
    return 0
