"""`python -m ernievil2 COMMAND ...`: one entry point for every tool; each command is the `main` of the module
of its name (imported only when used)."""
import importlib
import sys

COMMANDS = {
    "infer": ("infer", "embed a TSV of text-image pairs (run_infer.sh)"),
    "train": ("train", "train from a YAML config (run_train.sh)"),
    "launch-plan": ("launch_plan", "how run_train.sh / run_infer.sh start a config (used by them)"),
    "embed": ("embed", "embed an image folder/TSV or a list of texts into an .npz"),
    "zeroshot": ("zeroshot", "zero-shot image classification (accuracy for labelled TSVs)"),
    "tag": ("tag", "object tags for images, zero-shot from a vocabulary (the trainer's tags file)"),
    "index": ("index", "build a search index (faiss or Milvus) over embeddings"),
    "search": ("search", "search an index with a text or an image"),
    "serve": ("serve", "HTTP search service and web page over an index"),
    "eval": ("eval", "Recall@K of an embeddings file (eval_retri.py)"),
    "convert": ("convert", "weights: official <-> PaddleNLP layout, .pdparams -> .safetensors"),
    "export": ("export", "export the towers for Paddle Inference, or as ONNX files (--format onnx)"),
    "demo-data": ("demo_data", "generate the synthetic demo data set"),
    "build-vocab": ("build_vocab", "build a token\\tid vocabulary from TSV files"),
    "convert-data": ("convert_data", "convert images + captions to the TSV format"),
    "config-docs": ("config_docs", "write docs/configuration.md from the config schemas"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {doc}" for name, (_, doc) in COMMANDS.items()]
        print("usage: python -m ernievil2 COMMAND [args]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    module, _ = COMMANDS[argv[0]]
    return importlib.import_module(f"ernievil2.cli.{module}").main(argv[1:])
