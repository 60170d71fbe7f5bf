"""`python -m ernievil2 convert-data`: an image folder + JSONL/CSV captions, or Chinese-CLIP files, to the
text<TAB>image_id<TAB>base64[<TAB>tags] TSV."""
import argparse
import sys

from .common import guarded


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ernievil2 convert-data",
        description="Convert an image folder + JSONL/CSV captions, or Chinese-CLIP *_imgs.tsv + *_texts.jsonl, "
                    "to the text<TAB>image_id<TAB>base64[<TAB>tags] TSV.")
    parser.add_argument("--out", required=True, help="TSV file to write")
    parser.add_argument("--images", help="folder of image files (with --captions)")
    parser.add_argument("--captions", help="JSONL or CSV captions file (with --images)")
    parser.add_argument("--captions-format", choices=("jsonl", "csv"), help="default: from the file extension")
    parser.add_argument("--clip-imgs", help="Chinese-CLIP style *_imgs.tsv (image_id<TAB>base64)")
    parser.add_argument("--clip-texts", help="Chinese-CLIP style *_texts.jsonl (with --clip-imgs)")
    parser.add_argument("--max-side", type=int, help="shrink images whose longer side exceeds this (re-encoded "
                                                     "as JPEG); others keep their original bytes")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error",
                        help="error: stop at the first bad input row (default); skip: skip and count them")
    parser.add_argument("--bad-rows-log", help="with --on-bad-row skip: write the skipped rows' reasons here")
    parser.add_argument("--tags", help="a tags file (image_id<TAB>tag1,tag2,..., e.g. from `tag`) for the rows "
                                       "whose captions record gives no tags")
    args = parser.parse_args(argv)
    folder_mode = args.images is not None or args.captions is not None
    clip_mode = args.clip_imgs is not None or args.clip_texts is not None
    if folder_mode == clip_mode:
        parser.print_usage(sys.stderr)
        print("error: give either --images and --captions, or --clip-imgs and --clip-texts", file=sys.stderr)
        return 2
    if folder_mode and (args.images is None or args.captions is None):
        print("error: --images and --captions go together", file=sys.stderr)
        return 2
    if clip_mode and (args.clip_imgs is None or args.clip_texts is None):
        print("error: --clip-imgs and --clip-texts go together", file=sys.stderr)
        return 2

    def run():
        from ..data.convert import convert_chinese_clip, convert_folder
        from ..data.tags import read_tags_file
        tags = read_tags_file(args.tags) if args.tags else None
        if folder_mode:
            summary = convert_folder(args.images, args.captions, args.out, args.on_bad_row, args.max_side,
                                     args.bad_rows_log, args.captions_format, tags_by_image=tags)
        else:
            summary = convert_chinese_clip(args.clip_imgs, args.clip_texts, args.out, args.on_bad_row,
                                           args.max_side, args.bad_rows_log, tags_by_image=tags)
        print(summary.line())

    return guarded(run, bad_row_hint="(use --on-bad-row skip to skip such rows); no output written",
                   bad_row_exit=2)
