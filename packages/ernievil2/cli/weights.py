"""Weights: `python -m ernievil2 convert` (layouts, safetensors)."""
import argparse

from ..interop.layouts import OFFICIAL, PADDLENLP
from .common import guarded


def convert_main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 convert",
        description="Convert ERNIE-ViL 2.0 weights between the official layout and PaddleNLP's ErnieViLModel, "
                    "or into a pickle-free .safetensors file.  The output format follows OUT's extension.")
    parser.add_argument("--to", required=True, choices=(PADDLENLP, OFFICIAL, "safetensors"),
                        help="target layout; 'safetensors' keeps the layout and changes only the file format")
    parser.add_argument("input", metavar="IN", help="a .pdparams or .safetensors file (or a PaddleNLP model dir)")
    parser.add_argument("output", metavar="OUT", help="the file to write: *.pdparams or *.safetensors")
    parser.add_argument("--drop-unknown", action="store_true",
                        help="convert even if some keys have no counterpart (they are listed, not kept)")
    args = parser.parse_args(argv)

    def run():
        from ..interop.convert import convert_file
        from ..interop.layouts import layer_counts
        src_file, result = convert_file(args.input, args.output, args.to, args.drop_unknown)
        counts = layer_counts(result.state)
        print(f"{src_file} ({result.source_layout} layout) -> {args.output} ({result.target_layout} layout, "
              f"{len(result.state)} tensors, {counts['vision']} vision + {counts['text']} text layers)")
        if result.source_layout == result.target_layout and args.to != "safetensors":
            print(f"note: {src_file} was already in the {args.to} layout; only the file format may have changed")
        if result.dropped:
            print(f"dropped {len(result.dropped)} key(s) with no counterpart: {', '.join(result.dropped)}")

    return guarded(run)


# `export` lives in cli/export.py; this name stays for callers of the old location.
from .export import export_main  # noqa: F401
