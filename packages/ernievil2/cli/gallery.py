"""`python -m ernievil2 embed [--nproc_per_node N ...] CONFIG -o images=SRC|texts=SRC -o output_file=OUT.npz` and
`python -m ernievil2 zeroshot CONFIG -o labels=LABELS -o images=SRC -o output_file=PRED.jsonl`."""
import json

from .common import add_launch_options, config_parser, guarded, launch_options, parse_with_overrides, relaunch

BAD_ITEM_HINT = "(set on_bad_row: skip to skip such items); no output written"


def embed_main(argv=None):
    parser = config_parser("python -m ernievil2 embed",
                           "Embed an image gallery (folder or image_id<TAB>base64 TSV) or text queries (text file "
                           "or JSONL) into an .npz of ids and L2-normalised embeddings.",
                           "inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    add_launch_options(parser)
    args, overrides = parse_with_overrides(parser, argv)
    ranks = launch_options(args)
    if ranks:  # start the ranks; each runs this command without the launcher options
        relaunch("embed_launch.py", ranks, [args.config] + [x for o in overrides for x in ("-o", o)])

    def run():
        from ..infer.gallery import load_embed_config, run_embed
        for line in run_embed(load_embed_config(args.config, overrides)).lines():
            print(line)

    return guarded(run, bad_row_hint=BAD_ITEM_HINT)


def zeroshot_main(argv=None):
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
