"""Fidelity of each CPU precision mode against fp32: the lowest cosine per row on the golden file (full-size Base,
seed-7 weights, against the official embeddings), top-10 neighbour overlap and Recall@1/5/10 of the demo model on
the demo test split (against the same model in fp32).

    python benchmarks/bench_fidelity.py --workdir /tmp/bench_fidelity [--demo-dir output/demo]
        [--modes paddle_inference:fp32,paddle_inference:bf16,openvino:fp32,openvino:bf16,openvino:int8]

The demo model is the one `bash run_train.sh packages/configs/demo.yaml` writes (output/demo/final.pdparams and
its infer.yaml).  int8 is calibrated on the golden file itself (16 rows: run_infer.sh's default, its test file)
and, for the demo, on the demo's dev split (300 rows), never on the test split it is scored on.

The demo's test split has 100 images, so one image ranked differently moves Image2Text R@K by a whole point; the
last columns score a larger held-out split (--large-test images, 5 captions each, generated like the demo's test
split by the same generator and seed: its first 100 images are the demo's test images), where the 0.3-point rule
of the issue can be met or missed by more than one image."""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ERNIEVIL2_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
sys.path.insert(0, os.path.join(REPO, "packages"))


def run_infer(config, out, engine, precision, overrides=()):
    cmd = ["bash", "run_infer.sh", "cpu", config, "-o", f"output_file={out}", "-o", f"engine={engine}",
           "-o", f"precision={precision}", "-o", "progress=false", *[x for o in overrides for x in ("-o", o)]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    from ernievil2.eval.embedding_files import load_embeddings
    return load_embeddings(out[:-4] + ".npz")


def lowest(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def top10_overlap(text, image, ids, ref_text, ref_image):
    """Mean overlap of each text query's 10 best gallery images (distinct ids) between a mode and fp32."""
    _, first = np.unique(ids, return_index=True)
    gallery, ref_gallery = image[np.sort(first)], ref_image[np.sort(first)]
    got = np.argsort(-(text @ gallery.T), axis=1)[:, :10]
    want = np.argsort(-(ref_text @ ref_gallery.T), axis=1)[:, :10]
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, want)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/bench_fidelity")
    ap.add_argument("--demo-dir", default=os.path.join(REPO, "output", "demo"))
    ap.add_argument("--modes",
                    default="paddle_inference:fp32,paddle_inference:bf16,openvino:fp32,openvino:bf16,openvino:int8")
    ap.add_argument("--demo-data", default=os.path.join(REPO, "demo_data"))
    ap.add_argument("--large-test", type=int, default=1000, help="images of the larger held-out split (0: none)")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    from ernievil2.eval.metrics import retrieval_metrics
    modes = [tuple(m.split(":")) for m in args.modes.split(",")]
    golden = os.path.join(SHARED, "reference", "golden")
    weights = os.path.join(args.workdir, "ref7.pdparams")
    if not os.path.exists(weights):
        subprocess.run([sys.executable, os.path.join(SHARED, "reference", "make_reference_checkpoint.py"), "--seed",
                        "7", "--out", weights], check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(golden, "official_embeddings.out"), encoding="utf-8") as f:
        official = [line.rstrip("\n").split("\t") for line in f]
    off_text = np.array([[float(x) for x in r[0].split()] for r in official])
    off_image = np.array([[float(x) for x in r[1].split()] for r in official])
    base = os.path.join(REPO, "packages", "configs", "ernie_vil_base.yaml")
    base_overrides = [f"vocab_file={os.path.join(SHARED, 'ernie_base_3.0', 'vocab.txt')}",
                      f"init_from_params={weights}",
                      f"test_file={os.path.join(golden, 'golden.coco.tsv')}",
                      "text_model_config=packages/ernie_base_3.0/ernie_config.base.json"]
    demo_config = os.path.join(args.demo_dir, "infer.yaml")
    calibration = f"calibration_file={os.path.join(args.demo_data, 'dev.tsv')}"
    large = write_large_test(args.demo_data, args.workdir, args.large_test) if args.large_test else None
    large_metrics = {}
    rows, reference = [], None
    for engine, precision in modes:
        text, image, _ = run_infer(base, os.path.join(args.workdir, f"golden_{engine}_{precision}.out"), engine,
                                   precision, base_overrides)
        d_text, d_image, d_ids = run_infer(demo_config, os.path.join(args.workdir, f"demo_{engine}_{precision}.out"),
                                           engine, precision,
                                           [calibration])
        if reference is None:
            reference = (d_text, d_image)
        metrics = retrieval_metrics(d_text, d_image, d_ids)
        if large:
            out = os.path.join(args.workdir, f"large_{engine}_{precision}.out")
            l_text, l_image, l_ids = run_infer(demo_config, out, engine, precision, [f"test_file={large}", calibration])
            large_metrics[(engine, precision)] = retrieval_metrics(l_text, l_image, l_ids)
        rows.append({"mode": f"{engine} {precision}", "golden_text_min_cos": round(lowest(text, off_text), 6),
                     "golden_image_min_cos": round(lowest(image, off_image), 6),
                     "demo_min_cos": round(min(lowest(d_text, reference[0]), lowest(d_image, reference[1])), 6),
                     "demo_top10_overlap": round(top10_overlap(d_text, d_image, d_ids, *reference), 4),
                     **{f"{d}_{k}": metrics[d][k] for d, k in KEYS}})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nreference for the demo columns: {modes[0][0]} {modes[0][1]}")
    print("| mode | golden text min cos | golden image min cos | demo min cos | demo top-10 overlap | "
          "T2I R@1/5/10 | I2T R@1/5/10 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t2i = "/".join(f"{r[f'text2image_R@{k}']:.1f}" for k in (1, 5, 10))
        i2t = "/".join(f"{r[f'image2text_R@{k}']:.1f}" for k in (1, 5, 10))
        print(f"| {r['mode']} | {r['golden_text_min_cos']} | {r['golden_image_min_cos']} | {r['demo_min_cos']} | "
              f"{r['demo_top10_overlap']} | {t2i} | {i2t} |")
    if large_metrics:
        print_large(large_metrics, args.large_test)


KEYS = [(d, f"R@{k}") for d in ("text2image", "image2text") for k in (1, 5, 10)]


def print_large(large_metrics, images):
    reference = next(iter(large_metrics.values()))
    print(f"\nlarger held-out split: {images} images x 5 captions; largest change of a Recall@K against the first mode")
    print("| mode | T2I R@1/5/10 | I2T R@1/5/10 | largest change (points) |\n|---|---|---|---|")
    for (engine, precision), m in large_metrics.items():
        t2i = "/".join(f"{m['text2image'][f'R@{k}']:.2f}" for k in (1, 5, 10))
        i2t = "/".join(f"{m['image2text'][f'R@{k}']:.2f}" for k in (1, 5, 10))
        change = max(abs(m[d][k] - reference[d][k]) for d, k in KEYS)
        print(f"| {engine} {precision} | {t2i} | {i2t} | {change:.2f} |")


def write_large_test(demo_data, workdir, images):
    """The demo generator's test split at `images` images (same seed and settings as the demo data)."""
    from ernievil2.data.demo import generate_split
    with open(os.path.join(demo_data, "manifest.json"), encoding="utf-8") as f:
        params = json.load(f)["params"]
    path = os.path.join(workdir, f"demo_test_{images}.tsv")
    if not os.path.exists(path):
        rows, _ = generate_split("test", images, params["captions_per_test_image"], seed=params["seed"],
                                 image_size=params["image_size"], caption_noise=params["caption_noise"],
                                 unique_signatures=True)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines("\t".join(row) + "\n" for row in rows)
        os.replace(path + ".tmp", path)
    return path


if __name__ == "__main__":
    main()
