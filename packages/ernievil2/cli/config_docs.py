"""`python -m ernievil2 config-docs [--out docs/configuration.md] [--check]`: the configuration reference, made
from the schemas in the code (a test keeps the committed file equal to `config_reference()`, so the reference
cannot drift from the code)."""
import argparse
import sys

from ..config import describe_schema
from ..fileio import write_text_atomic
from ..infer.options import EMBED_SCHEMA, INFER_SCHEMA, TAG_SCHEMA, ZEROSHOT_SCHEMA
from ..model.configs import TEXT_SCHEMA, VISION_SCHEMA
from ..train.config import TRAIN_SCHEMA
from .common import guarded

DEFAULT_PATH = "docs/configuration.md"

INTRO = """# Configuration reference

Generated from the schemas in the code by `python -m ernievil2 config-docs` (do not edit by hand; a test checks
that this file matches them).  Every config is YAML; any key can be overridden on the command line with
`-o key=value` (dotted for nested keys: `-o data.batch_size=32`; values are YAML: `-o queries=[a, b]`).
Unknown keys, wrong types and values outside the allowed range are errors that name the file and the key.

"Affects output" says whether changing the key can change the numbers a run computes; a resumed
`run_infer.sh` or `embed` run reuses its finished chunks when only keys marked "no" changed.
"""

# (title, schema, what it configures); the extra keys of embed and zeroshot are listed on their own.
SECTIONS = [
    ("Inference (`run_infer.sh`, `embed`, `zeroshot`, `search`, `serve`)", INFER_SCHEMA,
     ("The official `ernie_vil_base.yaml` keys (down to `unk_token`) keep their meaning; the others are optional. "
      "`embed`, `zeroshot`, `search` and `serve` do not need `test_file` and `output_file`.")),
    ("`python -m ernievil2 embed`: extra keys", {k: EMBED_SCHEMA[k] for k in EMBED_SCHEMA if k not in INFER_SCHEMA},
     "Set exactly one of `images` and `texts`; `output_file` is the `.npz` written."),
    ("`python -m ernievil2 zeroshot`: extra keys",
     {k: ZEROSHOT_SCHEMA[k] for k in ZEROSHOT_SCHEMA if k not in INFER_SCHEMA},
     "`output_file` is the `.jsonl` of predictions."),
    ("`python -m ernievil2 tag`: extra keys", {k: TAG_SCHEMA[k] for k in TAG_SCHEMA if k not in EMBED_SCHEMA},
     "`images` is what is tagged; `output_file` is the tags file (`image_id \\t tag1,tag2,...`)."),
    ("Training (`run_train.sh`)", TRAIN_SCHEMA, TRAIN_SCHEMA.doc),
    ("Image tower (`model.vision`, `vision_model`)", VISION_SCHEMA, VISION_SCHEMA.doc),
    ("Text tower (`model.text`, `text_model_config`)", TEXT_SCHEMA, TEXT_SCHEMA.doc + " (an ernie_config JSON's "
     "`type_vocab_size`, `task_type_vocab_size`, `sent_type_vocab_size` and `initializer_range` are ignored)"),
]


def config_reference():
    """The Markdown text of docs/configuration.md."""
    parts = [INTRO]
    for title, schema, what in SECTIONS:
        parts.append(f"## {title}\n\n{what}\n\n{describe_schema(schema)}\n")
    return "\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 config-docs",
                                     description="Write the configuration reference generated from the schemas.")
    parser.add_argument("--out", default=DEFAULT_PATH, help="file to write (default %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when --out differs from the generated reference")
    args = parser.parse_args(argv)

    def run():
        if not args.check:
            write_text_atomic(args.out, config_reference())
            print(f"wrote {args.out}")
            return 0
        try:
            with open(args.out, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != config_reference():
            print(f"{args.out} is not the generated reference; run python -m ernievil2 config-docs", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0

    return guarded(run)
