"""`python -m ernievil2 COMMAND ...`: one entry point for every tool; each is imported only when used."""
import importlib
import sys

COMMANDS = {
    "infer": ("ernievil2.cli", "infer_main", "embed a TSV (run_infer.sh)"),
    "train": ("ernievil2.cli", "train_main", "train from a YAML config (run_train.sh)"),
    "launch-plan": ("ernievil2.cli", "launch_plan_main", "how run_train.sh starts a config (used by it)"),
    "eval": ("ernievil2.evaluation", "main", "Recall@K of an embeddings file (eval_retri.py)"),
    "convert": ("ernievil2.convert", "main", "weights: official <-> PaddleNLP layout, .pdparams -> .safetensors"),
    "export": ("ernievil2.export", "main", "export the towers for Paddle Inference"),
    "demo-data": ("ernievil2.demo_data", "main", "generate the synthetic demo data set"),
    "build-vocab": ("ernievil2.vocab_builder", "main", "build a token\\tid vocabulary from TSV files"),
    "convert-data": ("ernievil2.data_convert", "main", "convert images + captions to the TSV format"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {doc}" for name, (_, _, doc) in COMMANDS.items()]
        print("usage: python -m ernievil2 COMMAND [args]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(module), function)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
