"""Benchmark: our eval_retri.py against the official evaluation algorithm, on random 768-d embedding files.

    python benchmarks/bench_eval.py [--reps 3] [--official-reps 1] [--pairs 25000] [--images 5000] [--captions 5]
                                    [--official-script PATH/TO/release/eval_retri.py]

Writes two files in a temporary directory, formatted the way the official run_infer.py writes them
(str() of each float32, space-separated; text \\t image \\t id):
  * one-to-one: N text/image pairs, third column the official constant 1;
  * five-caption: M images x C captions, third column the image id, each image row repeated per caption.
Ours runs twice per file: parsing the text (--no-sidecar), and reading the verified .npz copy that run_infer.sh
writes beside its text output (made here from the parsed text, with the file's size and CRC-32); both must print
the same table.  Each evaluator runs as its own subprocess so that its peak RSS (os.wait4 -> ru_maxrss) is its own; the
table
reports the median wall time over the repetitions.  On the one-to-one file the two printed tables must be
identical (our pairs mode reproduces the official numbers); the script says so, or exits 1.

`python benchmarks/bench_eval.py --official FILE` runs only the official algorithm (used for the subprocess;
the tests import `official_eval` from here as the oracle for pairs mode).
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------------------------------------
# The official algorithm, re-implemented plainly (not copied): per-value Python float parsing, the full
# text x image score matrix, rank = number of items scoring strictly higher than the row's own pair.
# --------------------------------------------------------------------------------------------------------

def official_load(path):
    texts, images = [], []
    with open(path) as f:
        for line in f:
            text_col, image_col, _ = line.strip("\n").split("\t")
            texts.append(np.array([float(v) for v in text_col.split(" ")]))
            images.append(np.array([float(v) for v in image_col.split(" ")]))
    text = np.array(texts, dtype=np.float32)
    image = np.array(images, dtype=np.float32)
    return text, image


def official_ranks(score, slices=10):
    """Rank of every row's own column (row i <-> column i), computed slice by slice like the official: a flat
    np.take of the diagonal (which copies a non-contiguous slice) and a broadcast (rows, cols, 1) comparison."""
    n, m = score.shape
    step = max(1, -(-n // slices))
    out = []
    for a in range(0, n, step):
        block = score[a:a + step]
        rows = len(block)
        own = np.take(block, np.arange(rows) * m + np.arange(a, a + rows))
        out.append((block[:, :, None] > own[:, None, None]).sum(1).min(1))
    return np.concatenate(out)


def official_recalls(ranks, ks=(1, 5, 10)):
    n = float(len(ranks))
    recalls = [(ranks < k).sum() / n for k in ks]
    mean = sum(recalls) / float(len(recalls))
    mrr = (1.0 / (1.0 + ranks)).sum() / n
    return recalls + [mean, mrr]


def official_table(t2i, i2t, ks=(1, 5, 10)):
    """The official printout: tabulate(..., tablefmt="github", floatfmt=".2f") of values rounded to 2 places."""
    cols = len(ks) + 1
    rows = [["Text2Image"] + [round(v * 100, 2) for v in t2i][:cols],
            ["Image2Text"] + [round(v * 100, 2) for v in i2t][:cols],
            ["MeanRecall"] + [round((a + b) / 2 * 100, 2) for a, b in zip(t2i, i2t)][:cols]]
    headers = ["Name"] + [f"R@{k}" for k in ks] + ["meanRecall"]
    try:
        from tabulate import tabulate
    except ImportError:
        return plain_github_table(headers, rows)
    return tabulate(rows, headers=headers, tablefmt="github", floatfmt=".2f")


def plain_github_table(headers, rows):
    """Minimal stand-in for tabulate's github format (text left-aligned, numbers right-aligned, headers padded
    by two), used when tabulate is not installed."""
    cells = [[r[0]] + [f"{v:.2f}" for v in r[1:]] for r in rows]
    widths = [max([len(headers[i]) + 2] + [len(c[i]) for c in cells]) for i in range(len(headers))]

    def line(values):
        parts = [v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(values, widths))]
        return "| " + " | ".join(parts) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(c) for c in cells])


def official_eval(path, ks=(1, 5, 10)):
    text, image = official_load(path)
    n = len(text)
    step = max(1, -(-n // 10))
    # Ten row slices, then one concatenated copy: the full N x N float32 matrix (twice, briefly).
    score = np.concatenate([text[a:a + step] @ image.T for a in range(0, n, step)], 0)
    del text, image
    t2i = official_recalls(official_ranks(score), ks)
    i2t = official_recalls(official_ranks(score.T), ks)
    return official_table(t2i, i2t, ks)


# --------------------------------------------------------------------------------------------------------
# Random files
# --------------------------------------------------------------------------------------------------------

def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _fmt(vec):
    # str() of each float32, as the official run_infer.py writes it
    return " ".join(map(str, vec))


def write_pairs_file(path, n, dim, noise, seed=0):
    """n one-to-one pairs; texts are noisy copies of their image, so the recalls are neither 0 nor 100."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for a in range(0, n, 1000):
            image = _unit(rng.standard_normal((min(1000, n - a), dim)))
            text = _unit(image + noise * rng.standard_normal(image.shape) / np.sqrt(dim))
            f.writelines(f"{_fmt(t)}\t{_fmt(i)}\t1\n" for t, i in zip(text, image))


def write_caption_file(path, images, captions, dim, noise, seed=1):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for a in range(0, images, 200):
            image = _unit(rng.standard_normal((min(200, images - a), dim)))
            for j, vec in enumerate(image):
                image_str = _fmt(vec)
                text = _unit(vec + noise * rng.standard_normal((captions, dim)) / np.sqrt(dim))
                f.writelines(f"{_fmt(t)}\t{image_str}\t{a + j}\n" for t in text)


def write_verified_sidecar(path):
    """The .npz run_infer.sh writes beside its text output (same float32 values, plus the text file's size and
    CRC-32), so that eval_retri.py reads it instead of parsing."""
    sys.path.insert(0, os.path.join(REPO, "packages"))
    from ernievil2.eval import embedding_files, sidecar
    side = sidecar.sidecar_path_for(path)
    if sidecar.matching_sidecar(path) is None:
        text, image, ids = embedding_files.load_embeddings(path)
        sidecar.save_sidecar(side, text, image, ids, text_file=path)
    return side


# --------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------

def run_measured(cmd):
    """Run cmd; return (seconds, peak RSS in MB of that process, stdout)."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err = proc.stderr.read().decode()
        proc.stderr.close()
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err}")
        out.seek(0)
        return seconds, usage.ru_maxrss / 1024.0, out.read().decode()


def measure(cmd, reps):
    runs = [run_measured(cmd) for _ in range(reps)]
    return (statistics.median(r[0] for r in runs), max(r[1] for r in runs), runs[-1][2], [r[0] for r in runs])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", metavar="FILE", help="only run the official algorithm on FILE and print its table")
    p.add_argument("--reps", type=int, default=3, help="runs of our evaluator per file (median reported)")
    p.add_argument("--official-reps", type=int, default=1, help="runs of the official algorithm per file")
    p.add_argument("--official-script", metavar="PATH",
                   help="also time your own copy of the release's eval_retri.py (it needs tabulate installed)")
    p.add_argument("--pairs", type=int, default=25000, help="rows of the one-to-one file")
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--captions", type=int, default=5)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--noise", type=float, default=7.0, help="caption noise (relative to the unit image vector)")
    p.add_argument("--dir", help="keep the generated files here (reused when present) instead of a temp dir")
    args = p.parse_args(argv)
    if args.official:
        print(official_eval(args.official))
        return 0

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        where = args.dir or tmp
        os.makedirs(where, exist_ok=True)
        files = [("one-to-one", f"{args.pairs:,} pairs", os.path.join(where, f"pairs_{args.pairs}_{args.dim}.txt"),
                  lambda path: write_pairs_file(path, args.pairs, args.dim, args.noise)),
                 ("five-caption", f"{args.images:,} images x {args.captions} captions",
                  os.path.join(where, f"captions_{args.images}x{args.captions}_{args.dim}.txt"),
                  lambda path: write_caption_file(path, args.images, args.captions, args.dim, args.noise))]
        results, identical = [], None
        for name, desc, path, make in files:
            if not os.path.exists(path):
                t = time.perf_counter()
                make(path)
                print(f"wrote {path} ({os.path.getsize(path) / 2**20:.0f} MB) in {time.perf_counter() - t:.0f} s",
                      file=sys.stderr)
            ours = measure([sys.executable, os.path.join(REPO, "eval_retri.py"), "--no-sidecar", path], args.reps)
            official = measure([sys.executable, os.path.abspath(__file__), "--official", path], args.official_reps)
            print(f"{name}: official runs {official[3]}, ours {ours[3]}", file=sys.stderr)
            print(f"\n{name} ({desc}), official algorithm:\n{official[2]}\nours:\n{ours[2]}", file=sys.stderr)
            # What run_infer.sh users get: the .npz it writes beside the text, verified by size and CRC-32.
            write_verified_sidecar(path)
            side = measure([sys.executable, os.path.join(REPO, "eval_retri.py"), path], args.reps)
            if side[2] != ours[2]:
                raise SystemExit(f"{name}: the table read through the sidecar differs from the parsed one")
            if name == "one-to-one":
                identical = official[2] == ours[2]
            script = (measure([sys.executable, args.official_script, path], args.official_reps)
                      if args.official_script else None)
            results.append((name, desc, official, ours, side, script))

    load_after = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Random {args.dim}-d embeddings, {os.cpu_count()} CPUs (1-minute load average {load_before:.1f} before, "
          f"{load_after:.1f} after, other work included); median wall time (official: {args.official_reps} run(s), "
          f"ours: {args.reps}); peak RSS of the evaluating process.\n")
    print("| File | Evaluator | Median time (s) | Peak RSS (MB) | Speed-up | Peak memory |")
    print("|------|-----------|----------------:|--------------:|---------:|------------:|")
    for name, desc, official, ours, side, script in results:
        print(f"| {name} ({desc}) | official algorithm | {official[0]:.1f} | {official[1]:,.0f} | 1x | 1 |")
        if script:
            print(f"| {name} ({desc}) | the release's eval_retri.py | {script[0]:.1f} | {script[1]:,.0f} | "
                  f"{official[0] / script[0]:.2f}x | 1/{official[1] / script[1]:.2f} |")
        for label, run in (("eval_retri.py, text parsed", ours), ("eval_retri.py, run_infer's .npz", side)):
            print(f"| {name} ({desc}) | {label} | {run[0]:.1f} | {run[1]:,.0f} | "
                  f"{official[0] / run[0]:.1f}x | 1/{official[1] / run[1]:.1f} |")
    print(f"\nOne-to-one tables identical to the official algorithm's: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
