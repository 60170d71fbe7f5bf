"""`python -m ernievil2 infer CONFIG [-o key=value ...]`, behind run_infer.sh."""
from .common import config_parser, guarded, parse_with_overrides

BAD_ROW_HINT = "(set on_bad_row: skip to skip such rows); no output written"


def main(argv=None):
    parser = config_parser("run_infer.sh", "Embed a text/image TSV with ERNIE-ViL 2.0.",
                           "YAML config (the official ernie_vil_base.yaml works unchanged)")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..infer.options import load_infer_config
        from ..infer.run import run_inference
        summary = run_inference(load_infer_config(args.config, overrides))
        for line in summary.lines():
            print(line)

    return guarded(run, bad_row_hint=BAD_ROW_HINT)
