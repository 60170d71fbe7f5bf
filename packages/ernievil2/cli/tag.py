"""`python -m ernievil2 tag CONFIG --images FOLDER|TSV [--vocab FILE] [--out TAGS.tsv] [-o tag.max_tags=5 ...]`:
object tags for the trainer's fourth view (data.tags_file, convert-data --tags), chosen zero-shot."""
from .common import config_parser, guarded, parse_with_overrides

BAD_ITEM_HINT = "(set on_bad_row: skip to skip such images); no output written"


def main(argv=None):
    parser = config_parser("python -m ernievil2 tag",
                           "Tag images with object names chosen zero-shot from a vocabulary; writes image_id<TAB>"
                           "tag1,tag2,... lines, the trainer's data.tags_file format.",
                           "inference YAML, e.g. packages/configs/ernie_vil_base.yaml or OUTPUT_DIR/infer.yaml")
    parser.add_argument("--images", help="a folder of images, an image_id<TAB>base64 TSV or a text<TAB>image_id<TAB>"
                                         "base64[<TAB>tags] training TSV (each image once); same as -o images=")
    parser.add_argument("--vocab", help="tag names, one per line (# comments); default: the built-in Chinese list "
                                        "(same as -o tag.vocabulary=)")
    parser.add_argument("--out", help="tags file to write (same as -o output_file=)")
    args, overrides = parse_with_overrides(parser, argv)
    for key, value in (("images", args.images), ("tag.vocabulary", args.vocab), ("output_file", args.out)):
        if value is not None:
            overrides.append((key, value))

    def run():
        from ..infer.tagger import load_tag_config, run_tag
        for line in run_tag(load_tag_config(args.config, overrides)).lines():
            print(line)

    return guarded(run, bad_row_hint=BAD_ITEM_HINT)
