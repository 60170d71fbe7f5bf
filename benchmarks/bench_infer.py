"""Throughput and peak memory of run_infer.sh against a straightforward eager baseline (the official script's
algorithm), with the full-size Base model on the CPU.

    python benchmarks/bench_infer.py [--rows 40,240] [--engines eager,paddle_inference,openvino_bf16,...]
                                     [--skip-baseline] [--query-latency] [--startup]

Engines: eager, paddle_inference, openvino, each with `_bf16` for precision bf16, and openvino_int8 (quantised
once, before the timed runs, on 300 generated calibration rows of the same kind).  --query-latency also times one
text query through the Python API (median of 50 after warm-up); --startup runs a 1-row file (start-up cost).

The baseline runs on the smallest file only (its throughput does not depend on the file size).

Generates COCO-CN style TSV files (640x480 JPEGs; one caption per image, and five captions per image), a
full-size checkpoint in the official layout (random weights: speed does not depend on the values), runs each
configuration in a fresh process and prints pairs/s and peak RSS (the process tree's largest resident set).
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile

import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHARED = os.environ.get("ERNIEVIL2_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
CAPTIONS = ["一只猫坐在窗台上晒太阳", "两个孩子在公园里放风筝", "厨房的桌子上放着水果和面包", "雪山下有一片安静的湖泊",
            "A man riding a bicycle down a busy street.", "夜晚的城市街道上车来车往，路灯照亮了湿漉漉的路面"]


def make_image(rng, width=640, height=480):
    img = np.zeros((height, width, 3), np.uint8)
    img[:] = rng.integers(0, 255, 3)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(img, center, int(rng.integers(10, 120)), [int(c) for c in rng.integers(0, 255, 3)], -1)
    noise = rng.normal(0, 8, img.shape)
    img = np.clip(img + noise, 0, 255).astype(np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()).decode()


def make_caption(rng):
    """One to three joined phrases: lengths vary like real captions (about 10 to 48 tokens), which matters for
    the text tower's padding and for oneDNN, which keeps state per input shape."""
    picks = rng.integers(0, len(CAPTIONS), int(rng.choice([1, 2, 3], p=[0.5, 0.4, 0.1])))
    return "，".join(CAPTIONS[k].rstrip(".") for k in picks)


def write_tsv(path, n_rows, captions_per_image, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        image = None
        for i in range(n_rows):
            if i % captions_per_image == 0:
                image = make_image(rng)
            f.write(f"{make_caption(rng)}\t{i // captions_per_image}\t{image}\n")
    return path


def run_measured(cmd, env=None):
    """Run cmd in a child process; return (seconds, peak RSS in MB of the largest process it waited for)."""
    probe = [sys.executable, "-c",
             "import resource, subprocess, sys, time; t = time.time(); "
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
             "dt = time.time() - t; "
             "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, r.returncode); "
             "sys.stderr.write(r.stderr[-2000:] if r.returncode else '')", *cmd]
    out = subprocess.run(probe, capture_output=True, text=True, cwd=REPO, env={**os.environ, **(env or {})})
    seconds, rss, code = out.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return float(seconds), float(rss)


def split_engine(name):
    """'openvino_bf16' -> ('openvino', 'bf16'); 'eager' -> ('eager', 'fp32')."""
    for precision in ("bf16", "int8"):
        if name.endswith("_" + precision):
            return name.removesuffix("_" + precision), precision
    return name, "fp32"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="40,240")
    ap.add_argument("--engines", default="eager,paddle_inference",
                    help="comma-separated; <engine>_bf16 / _int8 = that engine with precision bf16 / int8; "
                         "none: the baseline only")
    ap.add_argument("--query-latency", action="store_true")
    ap.add_argument("--startup", action="store_true")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="bench_infer_")
    os.makedirs(work, exist_ok=True)
    vocab = os.path.join(SHARED, "ernie_base_3.0", "vocab.txt")
    weights = os.path.join(work, "ref.pdparams")
    if not os.path.exists(weights):
        subprocess.run([sys.executable, os.path.join(SHARED, "reference", "make_reference_checkpoint.py"),
                        "--seed", "7", "--out", weights], check=True, stdout=subprocess.DEVNULL)
    base_cfg = os.path.join(REPO, "packages", "configs", "ernie_vil_base.yaml")
    common = ["-o", f"vocab_file={vocab}", "-o", f"init_from_params={weights}", "-o", "progress=false",
              "-o", f"text_model_config={os.path.join(REPO, 'packages', 'ernie_base_3.0', 'ernie_config.base.json')}"]
    export_dir = os.path.join(work, "exported")
    engines = [e for e in args.engines.split(",") if e not in ("", "none")]
    if any(e.startswith(("paddle_inference", "openvino")) for e in engines) and not os.path.isdir(export_dir):
        subprocess.run([sys.executable, "-m", "ernievil2", "export", base_cfg, *common,
                        "-o", f"inference_model_dir={export_dir}"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    calibration = os.path.join(work, "calibration.tsv")
    if any(split_engine(e)[1] == "int8" for e in engines):
        if not os.path.exists(calibration):  # rewriting it would change its time, and so the int8 cache key
            write_tsv(calibration, 300, 1, seed=1)
        warm = write_tsv(os.path.join(work, "warm.tsv"), 1, 1, seed=2)
        subprocess.run(["bash", "run_infer.sh", "cpu", base_cfg, *common, "-o", f"test_file={warm}",
                        "-o", f"output_file={os.path.join(work, 'warm.out')}", "-o", "engine=openvino",
                        "-o", "precision=int8", "-o", f"calibration_file={calibration}",
                        "-o", f"inference_model_dir={export_dir}"], check=True, cwd=REPO)
    common += ["-o", f"calibration_file={calibration}"]
    results = []
    row_counts = [int(r) for r in args.rows.split(",")]
    if args.startup:
        row_counts = [1] + row_counts
    for rows in row_counts:
        for per_image in (1, 5):
            tsv = write_tsv(os.path.join(work, f"rows{rows}_x{per_image}.tsv"), rows, per_image)
            if rows == 1 and per_image == 5:
                continue
            if not args.skip_baseline and rows == row_counts[-1]:
                # The official script gets MKL's default code path; ours (importing ernievil2) asks for the AVX2
                # one on AMD CPUs (cpu_runtime).  Both baselines are reported so the two effects stay apart.
                for label, mkl in (("MKL default", "default"), ("MKL AVX2 path", "avx2")):
                    sec, rss = run_measured([sys.executable, os.path.join(HERE, "official_style_infer.py"), tsv,
                                             weights, vocab, os.path.join(work, "baseline.out"), mkl])
                    results.append(dict(rows=rows, captions_per_image=per_image,
                                        run=f"baseline (official algorithm, {label})",
                                        seconds=sec, pairs_per_sec=rows / sec, peak_rss_mb=rss))
            for engine in engines:
                kind, precision = split_engine(engine)
                cmd = ["bash", "run_infer.sh", "cpu", base_cfg, *common, "-o", f"test_file={tsv}",
                       "-o", f"output_file={os.path.join(work, 'ours.out')}",
                       "-o", f"engine={kind}", "-o", f"precision={precision}",
                       "-o", f"inference_model_dir={export_dir}"]
                sec, rss = run_measured(cmd)
                results.append(dict(rows=rows, captions_per_image=per_image, run=f"run_infer.sh ({engine})",
                                    seconds=sec, pairs_per_sec=rows / sec, peak_rss_mb=rss))
            for r in results:
                if r["rows"] == rows and r["captions_per_image"] == per_image:
                    print(json.dumps(r), flush=True)
    baseline = {(r["rows"], r["captions_per_image"]): r["pairs_per_sec"] for r in results
                if r["run"] == "baseline (official algorithm, MKL default)"}
    print("\n| rows | captions/image | run | seconds | pairs/s | x official | peak RSS (MB) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        base = baseline.get((r["rows"], r["captions_per_image"]))
        ratio = f"{r['pairs_per_sec'] / base:.1f}x" if base else ""
        print(f"| {r['rows']} | {r['captions_per_image']} | {r['run']} | {r['seconds']:.1f} | "
              f"{r['pairs_per_sec']:.2f} | {ratio} | {r['peak_rss_mb']:.0f} |")
    if args.query_latency:
        query_latency(engines, weights, vocab, export_dir, calibration)


def query_latency(engines, weights, vocab, export_dir, calibration):
    """One text query through the Python API, per engine: the latency the search service lives on."""
    code = ("import sys, time, statistics; sys.path.insert(0, sys.argv[5]); import ernievil2; "
            "m = ernievil2.load(sys.argv[1], vocab_file=sys.argv[2], engine=sys.argv[3], precision=sys.argv[4], "
            "device='cpu', inference_model_dir=sys.argv[6], calibration_file=sys.argv[7]); q = ['红色的汽车停在路边']; "
            "[m.encode_text(q) for _ in range(5)]; t = []\n"
            "for _ in range(50):\n s = time.perf_counter(); m.encode_text(q); t.append(time.perf_counter() - s)\n"
            "print(round(statistics.median(t) * 1000, 1))")
    print("\n| engine | one text query, median (ms) |\n|---|---|")
    for engine in engines:
        kind, precision = split_engine(engine)
        out = subprocess.run([sys.executable, "-c", code, weights, vocab, kind, precision,
                              os.path.join(REPO, "packages"), export_dir, calibration], capture_output=True, text=True)
        print(f"| {engine} | {out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr[-200:]} |")


if __name__ == "__main__":
    main()
