"""`python -m ernievil2 embed [--nproc_per_node N ...] CONFIG -o images=SRC|texts=SRC -o output_file=OUT.npz`:
embed an image gallery or text queries into an .npz."""
from .common import add_launch_options, config_parser, guarded, launch_options, parse_with_overrides, relaunch

BAD_ITEM_HINT = "(set on_bad_row: skip to skip such items); no output written"


def main(argv=None):
    parser = config_parser("python -m ernievil2 embed",
                           "Embed an image gallery (folder or image_id<TAB>base64 TSV) or text queries (text file "
                           "or JSONL) into an .npz of ids and L2-normalised embeddings.",
                           "inference YAML, e.g. packages/configs/ernie_vil_base.yaml")
    add_launch_options(parser)
    args, overrides = parse_with_overrides(parser, argv)
    ranks = launch_options(args)
    if ranks:  # start the ranks; each runs this command without the launcher options
        relaunch("embed", ranks, [args.config] + [x for o in overrides for x in ("-o", o)])

    def run():
        from ..infer.gallery import load_embed_config, run_embed
        for line in run_embed(load_embed_config(args.config, overrides)).lines():
            print(line)

    return guarded(run, bad_row_hint=BAD_ITEM_HINT)
