"""Data tools: `python -m ernievil2 demo-data`, `build-vocab` and `convert-data`."""
import argparse
import os
import sys
import time

from .common import guarded


def demo_data_main(argv=None):
    from ..data.demo import DEFAULTS
    parser = argparse.ArgumentParser(prog="python -m ernievil2 demo-data",
                                     description="Generate the synthetic shapes image-text demo data set.")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    parser.add_argument("--train-images", type=int, default=DEFAULTS["train_images"])
    parser.add_argument("--dev-images", type=int, default=DEFAULTS["dev_images"])
    parser.add_argument("--test-images", type=int, default=DEFAULTS["test_images"])
    parser.add_argument("--captions-per-train-image", type=int, default=DEFAULTS["captions_per_train_image"])
    parser.add_argument("--captions-per-test-image", type=int, default=DEFAULTS["captions_per_test_image"],
                        help="captions per dev/test image (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=DEFAULTS["image_size"], help="square side in pixels")
    parser.add_argument("--caption-noise", type=float, default=DEFAULTS["caption_noise"],
                        help="scale of caption noise: 0 = clean captions, 1 = default")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if --out already holds a complete set with the same parameters")
    args = parser.parse_args(argv)

    def run():
        from ..data.demo import ensure_demo_data, generate_demo_data
        params = {name: getattr(args, name) for name in DEFAULTS}
        start = time.perf_counter()
        if args.if_missing:
            paths, generated = ensure_demo_data(args.out, **params)
        else:
            paths, generated = generate_demo_data(args.out, **params), True
        if not generated:
            print(f"demo data in {args.out} is up to date (same parameters); nothing to do")
            return
        print(f"wrote {args.train_images} train, {args.dev_images} dev and {args.test_images} test images "
              f"({args.image_size}x{args.image_size} JPEG) to {args.out} in {time.perf_counter() - start:.1f} s: "
              + ", ".join(os.path.basename(p) for p in paths.values()))

    return guarded(run)


def build_vocab_main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ernievil2 build-vocab",
                                     description="Build a token<TAB>id vocabulary from TSV text and tag columns.")
    parser.add_argument("inputs", nargs="+", metavar="FILE.tsv")
    parser.add_argument("--out", required=True, help="vocabulary file to write")
    parser.add_argument("--min-count", type=int, default=1, help="drop tokens seen fewer times (default 1)")
    parser.add_argument("--max-size", type=int, default=None, help="at most this many entries, specials included")
    parser.add_argument("--no-lower-case", action="store_true", help="keep case (only for a cased tokenizer)")
    parser.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    args = parser.parse_args(argv)

    def run():
        from ..data.tokenizer import ErnieTokenizer
        from ..data.vocab import check_coverage, count_tokens, read_tsv_texts, vocab_from_counts, write_vocab
        texts, policy = read_tsv_texts(args.inputs, args.on_bad_row)
        counts = count_tokens(texts, do_lower_case=not args.no_lower_case)
        tokens = vocab_from_counts(counts, args.min_count, args.max_size)
        write_vocab(tokens, args.out)
        tokenizer = ErnieTokenizer.from_file(args.out, do_lower_case=not args.no_lower_case)
        unknown = len(check_coverage(tokenizer, texts))
        kept = set(tokens)
        dropped = sum(1 for token in counts if token not in kept)
        print(f"wrote {len(tokens)} tokens to {args.out} from {len(texts)} texts ({len(counts)} distinct basic "
              f"tokens, {dropped} dropped by --min-count/--max-size; {unknown} texts contain [UNK]"
              f"{f'; skipped {len(policy.skipped)} bad rows' if policy.skipped else ''})")

    return guarded(run, bad_row_hint="(use --on-bad-row skip to skip such rows); no vocabulary written",
                   bad_row_exit=2)


def convert_data_main(argv=None):
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
