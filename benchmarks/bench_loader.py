"""Benchmark: training samples per CPU core (MultiViewDataset), and with N DataLoader workers.

    python benchmarks/bench_loader.py [--rows 64] [--seconds 8] [--workers 2] [--image-size 224] [--noise 6]
                                      [--augment jitter_p=0 --augment blur_p=0 ...] [--colour-work device]

Writes its own TSV of 640x480 photo-like JPEG rows (base64, quality 90, a caption and four object tags each) in a
temporary directory, then measures, in this order:
  * the pieces on one thread: JPEG decode (full size), `augment_train` on a decoded image, and the inference
    path's preprocessing (base64 + full decode + `preprocess_eval`, what extraction needs per image);
  * `MultiViewDataset[(epoch, i)]` on one thread (cv2.setNumThreads(1), OMP/MKL/OpenBLAS threads 1): two augmented
    views + caption ids + tag ids per sample, the whole sample path of training;
  * the same dataset behind `paddle.io.DataLoader(num_workers=N)` (batch 32), samples/s of the whole loader.
With `--colour-work device` (the trainer's data.colour_work) a sample's views are uint8 crops and colour draws,
and the per-pixel colour work is measured apart: train.view_colour on batches of 32, on this CPU with Paddle's
threads at one (on a GPU it runs on the device instead).
Single-thread rates are per second of CPU time (time.process_time), i.e. per core; the loader rate is wall time.
Every epoch gets fresh augmentation (items (epoch, i) for epoch 0, 1, ...), so nothing is measured from a cache
that training would not hit; captions repeat across rows as they do in caption corpora (5 rows per image text).
The package is whatever `ernievil2` imports (PYTHONPATH), so one checkout's script measures another checkout's code:
run before and after back to back on the same machine, since other processes on it disturb the timings.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import base64  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

WORDS = ["a", "red", "bus", "parked", "near", "the", "road", "two", "dogs", "play", "with", "frisbee", "on", "grass",
         "kitchen", "table", "apples", "bananas", "window", "sunny", "一辆", "红色", "的", "公交车", "停", "在", "路边",
         "城市", "夜景", "高楼", "灯光", "厨房", "冰箱", "微波炉"]
TAGS = ["bus", "dog", "person", "car", "tree", "sky", "table", "cup", "cat", "building", "road", "grass"]


def photo_like_jpeg(rng, width=640, height=480, quality=90, noise=6.0):
    """Smooth gradients, a few filled shapes and sensor-like noise (standard deviation `noise` levels): with the
    default, JPEGs of ~80 KB (2 bits per pixel) like real photos, whose decoding is mostly entropy decoding;
    noise 0 gives light ~25 KB files whose decoding is mostly the inverse DCT (cheaper at a reduced scale)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, phase = rng.uniform(0.002, 0.02, 2).tolist() + [rng.uniform(0, 6.28)]
        image[..., c] = 128 + 90 * np.sin(a * xx + b * yy + phase)
    for _ in range(12):
        centre = tuple(int(v) for v in rng.integers(0, [width, height]))
        axes = tuple(int(v) for v in rng.integers(10, 120, 2))
        cv2.ellipse(image, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    if noise:
        image += rng.normal(0, noise, image.shape).astype(np.float32)
    bgr = np.clip(image, 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buffer.tobytes()


def write_rows(path, rows, seed=0, noise=6.0):
    rng = np.random.default_rng(seed)
    images = [photo_like_jpeg(rng, noise=noise) for _ in range(max(1, rows // 5))]
    captions = [" ".join(rng.choice(WORDS, int(rng.integers(6, 16)))) for _ in range(max(1, rows // 5))]
    lines = []
    for i in range(rows):
        tags = ",".join(rng.choice(TAGS, 4, replace=False))
        b64 = base64.b64encode(images[i % len(images)]).decode()
        lines.append(f"{captions[i // 5 % len(captions)]}\timg{i}\t{b64}\t{tags}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return images, sum(map(len, images)) / len(images)


def vocab_file(directory, texts):
    shared = os.path.join(os.environ.get("ERNIEVIL2_SHARED", ""), "ernie_base_3.0", "vocab.txt")
    if os.path.isfile(shared):
        return shared
    from ernievil2.data.vocab import build_vocab, write_vocab
    path = os.path.join(directory, "vocab.txt")
    write_vocab(build_vocab(texts), path)
    return path


def rate(fn, seconds):
    """Calls of fn(k), k = 0, 1, ..., per second of this process's CPU time, over about `seconds` of it (after
    one warm-up call).  CPU time, not wall time: on a shared machine other processes take the core away from this
    one now and then, which stretches wall time but not the CPU time a call costs (caches and SMT neighbours still
    disturb it a little)."""
    fn(0)
    count, start, wall = 0, time.process_time(), time.perf_counter()
    while time.process_time() - start < seconds and time.perf_counter() - wall < 10 * seconds:
        count += 1
        fn(count)
    return count / (time.process_time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0, help="time per single-thread measurement")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (0 skips that measurement)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--noise", type=float, default=6.0,
                        help="pixel noise of the generated photos: 6 (default) ~80 KB JPEGs, 0 ~25 KB")
    parser.add_argument("--augment", action="append", default=[], metavar="OPTION=P",
                        help="an augment_train option for the dataset, e.g. jitter_p=0 (what a sample costs without "
                             "the colour work)")
    parser.add_argument("--colour-work", choices=("loader", "device"), default="loader",
                        help="where the views' colour work runs (data.colour_work): device leaves it out of the "
                             "sample and times it apart")
    args = parser.parse_args()
    augment = {key: float(value) for key, value in (item.split("=", 1) for item in args.augment)} or True
    cv2.setNumThreads(1)

    import ernievil2
    from ernievil2.data.images import decode_base64_image, decode_image
    from ernievil2.data.row_index import RowIndex
    from ernievil2.data.transforms import augment_train, preprocess_eval
    from ernievil2.train.data import MultiViewDataset, collate_samples

    print(f"ernievil2 from {os.path.dirname(ernievil2.__file__)}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores; cv2 {cv2.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tsv = os.path.join(tmp, "train.tsv")
        images, mean_bytes = write_rows(tsv, args.rows, noise=args.noise)
        with open(tsv, encoding="utf-8") as f:
            texts = [line.split("\t")[0] for line in f] + TAGS + ["a photo of"]
        vocab = vocab_file(tmp, texts)
        print(f"{args.rows} rows, {len(images)} distinct 640x480 JPEGs of {mean_bytes / 1024:.0f} KiB on average")

        decoded = [decode_image(data) for data in images]
        decode_rate = rate(lambda k: decode_image(images[k % len(images)]), args.seconds / 4)
        gen = np.random.default_rng(0)
        augment_rate = rate(lambda k: augment_train(decoded[k % len(decoded)], gen, args.image_size), args.seconds / 4)
        print(f"one thread: JPEG decode (full size) {decode_rate:.0f} img/s, augment_train {augment_rate:.0f} views/s")
        b64 = [base64.b64encode(data).decode() for data in images]
        eval_rate = rate(lambda k: preprocess_eval(decode_base64_image(b64[k % len(b64)]), args.image_size),
                         args.seconds / 4)
        print(f"one thread: inference preprocessing (base64 + full decode + preprocess_eval) {eval_rate:.0f} img/s")

        on_device = args.colour_work == "device"
        dataset = MultiViewDataset(RowIndex(tsv), vocab, seed=1, image_size=args.image_size, augment=augment,
                                   **({"colour_on_device": True} if on_device else {}))  # (older checkouts)
        n = len(dataset)
        per_core = rate(lambda k: dataset[(1 + k // n, k % n)], args.seconds)
        print(f"one thread: MultiViewDataset {per_core:.1f} samples/s per core"
              + (f" (augment {augment})" if augment is not True else "")
              + (" (colour work on the device: crops and draws)" if on_device else ""))
        if on_device:
            time_colour_work(dataset, args.seconds)

        if args.workers:
            import paddle
            batch = 32
            items = [[(epoch, (b * batch + j) % n) for j in range(batch)] for epoch in range(2, 1000)
                     for b in range(max(1, n // batch))]
            pad_id = dataset.tokenizer.pad_id
            loader = paddle.io.DataLoader(dataset, batch_sampler=items, num_workers=args.workers,
                                          collate_fn=lambda s: collate_samples(s, pad_id), use_shared_memory=False)
            it = iter(loader)
            next(it)  # workers started and warm
            count, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                count += len(next(it)["image_key"])
            loader_rate = count / (time.perf_counter() - start)
            del it
            print(f"DataLoader, {args.workers} workers: {loader_rate:.1f} samples/s "
                  f"({loader_rate / args.workers:.1f} per worker)")


def time_colour_work(dataset, seconds, batch=32):
    """Samples/s of train.view_colour on this CPU (both views of a sample), Paddle at one thread."""
    import paddle

    from ernievil2.train.data import collate_samples
    from ernievil2.train.view_colour import colour_views
    paddle.set_device("cpu")
    n = len(dataset)
    batches = [collate_samples([dataset[(1, (b * batch + j) % n)] for j in range(batch)]) for b in range(4)]

    def colour(k):
        views = batches[k % len(batches)]
        for key in ("image_view1", "image_view2"):
            colour_views(views[key], views[f"{key}_colour"])
    per_second = rate(colour, seconds / 2) * batch
    print(f"one thread: the colour work of both views (train.view_colour, batches of {batch}, on this CPU) "
          f"{per_second:.1f} samples/s")


if __name__ == "__main__":
    main()
