"""`python -m ernievil2 demo-data --out DIR`: generate the synthetic shapes image-text demo data set."""
import argparse
import os
import time

from .common import guarded


def main(argv=None):
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
