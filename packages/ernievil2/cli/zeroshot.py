"""`python -m ernievil2 zeroshot CONFIG -o labels=LABELS -o images=SRC -o output_file=PRED.jsonl`: zero-shot
image classification."""
import json

from .common import config_parser, guarded, parse_with_overrides
from .embed import BAD_ITEM_HINT


def main(argv=None):
    parser = config_parser("python -m ernievil2 zeroshot",
                           "Zero-shot image classification with prompt templates; with a label \\t image_id \\t "
                           "base64 TSV also top-1 / top-5 accuracy per class.",
                           "inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    parser.add_argument("--json", action="store_true", help="print the summary and accuracy as one JSON object")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..infer.zeroshot import load_zeroshot_config, run_zeroshot
        summary = run_zeroshot(load_zeroshot_config(args.config, overrides))
        if args.json:
            report = {"images": summary.read, "classified": summary.written,
                      "skipped": sum(summary.skipped.values()), "predictions": summary.output_file,
                      "seconds": round(summary.seconds, 3)}
            if summary.accuracy:
                report["accuracy"] = summary.accuracy
            print(json.dumps(report, ensure_ascii=False, indent=2))
        else:
            for line in summary.lines():
                print(line)

    return guarded(run, bad_row_hint=BAD_ITEM_HINT)
