"""`python -m ernievil2 COMMAND ...`: one entry point for every tool; each is imported only when used."""
import importlib
import sys

COMMANDS = {
    "infer": ("infer", "main", "embed a TSV of text-image pairs (run_infer.sh)"),
    "train": ("train", "train_main", "train from a YAML config (run_train.sh)"),
    "launch-plan": ("train", "launch_plan_main", "how run_train.sh starts a config (used by it)"),
    "embed": ("gallery", "embed_main", "embed an image folder/TSV or a list of texts into an .npz"),
    "zeroshot": ("gallery", "zeroshot_main", "zero-shot image classification (accuracy for labelled TSVs)"),
    "index": ("search", "index_main", "build a search index (faiss or Milvus) over embeddings"),
    "search": ("search", "search_main", "search an index with a text or an image"),
    "serve": ("search", "serve_main", "HTTP search service and web page over an index"),
    "eval": ("eval", "main", "Recall@K of an embeddings file (eval_retri.py)"),
    "convert": ("weights", "convert_main", "weights: official <-> PaddleNLP layout, .pdparams -> .safetensors"),
    "export": ("export", "export_main", "export the towers for Paddle Inference, or as ONNX (--format onnx)"),
    "demo-data": ("data", "demo_data_main", "generate the synthetic demo data set"),
    "build-vocab": ("data", "build_vocab_main", "build a token\\tid vocabulary from TSV files"),
    "convert-data": ("data", "convert_data_main", "convert images + captions to the TSV format"),
}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        lines = [f"  {name:<13} {doc}" for name, (_, _, doc) in COMMANDS.items()]
        print("usage: python -m ernievil2 COMMAND [args]\n" + "\n".join(lines), file=sys.stderr)
        return 2
    module, function, _ = COMMANDS[argv[0]]
    return getattr(importlib.import_module(f"ernievil2.cli.{module}"), function)(argv[1:])
