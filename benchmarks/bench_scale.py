"""Scale benchmarks.

    python benchmarks/bench_scale.py training-data --workdir /tmp/bench_scale
        10M tiny rows in 200 shards against 10k rows: wall time of a 1-step tiny-model training run (process start
        to the end of step 1) and its peak RSS, for the first start (shards scanned into the row-index cache) and
        the second (offsets memory-mapped from the cache); and the scan rate.
    python benchmarks/bench_scale.py extraction --workdir /tmp/bench_infer --rows 240
        run_infer.sh on the same file: one process with 2 threads against 2 CPU ranks of 1 thread each (full-size
        Base; the files and the seed-7 checkpoint are the ones benchmarks/bench_infer.py writes).
    python benchmarks/bench_scale.py extraction --model small --workdir /tmp/bench_small --rows 200 --chunk-rows 40
        The same with nothing to prepare: a random "small" dual encoder (ViT 6 x 256 at 224 px, ERNIE 4 x 256) and
        200 rows of distinct 320x240 JPEGs written here; 5 chunks for 2 ranks, which claim them (infer.sharding).
"""
import argparse
import base64
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "packages"))
VOCAB = os.path.join(os.environ.get("ERNIEVIL2_SHARED") or os.path.join(os.path.dirname(REPO), "shared"),
                     "ernie_base_3.0", "vocab.txt")


def tiny_png_b64():
    import cv2
    rgb = np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)
    return base64.b64encode(cv2.imencode(".png", rgb)[1].tobytes()).decode()


def write_shards(folder, rows, shards):
    """`rows` rows in `shards` TSV files: short captions, unique ids, one small PNG repeated."""
    os.makedirs(folder, exist_ok=True)
    image = tiny_png_b64()
    per = rows // shards
    for k in range(shards):
        path = os.path.join(folder, f"part{k:04d}.tsv")
        if os.path.exists(path):
            continue
        lines = [f"一张小图 第{k}部分 第{i}行\t{k}_{i}\t{image}\n" for i in range(per)]
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(path + ".tmp", path)
    return folder


def training_run(data, workdir, name, cache):
    """Wall time and peak RSS (MB) of run_train.sh for one step of a tiny model on `data`."""
    cfg = {"output_dir": os.path.join(workdir, f"out_{name}"), "vocab_file": VOCAB, "seed": 0,
           "data": {"train_file": data, "batch_size": 32, "num_workers": 0, "image_size": 32},
           "model": {"vision": {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "heads": 2},
                     "text": {"vocab_size": 40000, "hidden_size": 32, "num_hidden_layers": 2,
                              "num_attention_heads": 2, "max_position_embeddings": 64}},
           "schedule": {"max_steps": 1, "log_every": 1, "save_every": 0, "warmup_steps": 0},
           "log": {"progress": False, "visualdl": False}}
    import yaml
    config = os.path.join(workdir, f"{name}.yaml")
    with open(config, "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, allow_unicode=True)
    env = dict(os.environ, ERNIEVIL2_CACHE=cache)
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", "bash", os.path.join(REPO, "run_train.sh"), config],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
    return seconds, int(proc.stderr.strip().splitlines()[-1]) / 1024


def bench_training_data(args):
    from ernievil2.data.row_index import scan_rows
    small = write_shards(os.path.join(args.workdir, "rows_10k"), 10_000, 1)
    big = write_shards(os.path.join(args.workdir, "rows_10M"), args.rows, args.shards)
    size = sum(os.path.getsize(os.path.join(big, f)) for f in os.listdir(big))
    files = sorted(os.path.join(big, f) for f in os.listdir(big))
    start = time.perf_counter()
    for path in files[:20]:
        scan_rows(path)
    scanned = sum(os.path.getsize(p) for p in files[:20])
    rate = scanned / (time.perf_counter() - start) / 1e6
    results = {"tsv_bytes": size, "scan_MB_per_s": round(rate)}
    for name, data in (("10k", small), ("10M", big)):
        cache = os.path.join(args.workdir, f"cache_{name}")
        subprocess.run(["rm", "-rf", cache])
        for attempt in ("first", "second"):
            seconds, rss = training_run(data, args.workdir, name, cache)
            results[f"{name}_{attempt}_start_s"] = round(seconds, 2)
            results[f"{name}_{attempt}_peak_rss_mb"] = round(rss)
    print(json.dumps(results, indent=2))


SMALL_VISION = {"image_size": 224, "patch_size": 16, "width": 256, "layers": 6, "heads": 4}
SMALL_TEXT = {"vocab_size": 40000, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024, "max_position_embeddings": 64}


def small_model_files(workdir, rows):
    """A random small dual encoder's weights, its text config and `rows` TSV rows of distinct JPEGs (made once)."""
    import cv2
    tsv, weights, text_json = (os.path.join(workdir, name) for name in
                               (f"small_rows{rows}.tsv", "small.pdparams", "small_text.json"))
    if not os.path.exists(weights):
        import paddle

        from ernievil2.model.dual_encoder import build_model
        from ernievil2.model.weights import save_weights
        with open(text_json, "w", encoding="utf-8") as f:
            json.dump(SMALL_TEXT, f)
        paddle.seed(0)
        save_weights(build_model(dict(SMALL_VISION), text_json), weights)
    if not os.path.exists(tsv):
        rng = np.random.default_rng(0)
        with open(tsv + ".tmp", "w", encoding="utf-8") as f:
            for i in range(rows):
                jpeg = cv2.imencode(".jpg", rng.integers(0, 255, (240, 320, 3), np.uint8))[1].tobytes()
                f.write(f"第{i}张图片的说明{'文字' * (i % 7)}\t{i}\t{base64.b64encode(jpeg).decode()}\n")
        os.replace(tsv + ".tmp", tsv)
    from ernievil2.infer.export_cache import cached_export  # exported before the timed runs, not by the first
    from ernievil2.infer.options import EngineOptions
    cached_export(EngineOptions(weights=weights, vision_model=dict(SMALL_VISION), text_model_config=text_json,
                                image_size=SMALL_VISION["image_size"]), "cpu")
    return tsv, ["-o", f"init_from_params={weights}", "-o", f"text_model_config={text_json}",
                 "-o", f"vision_model={json.dumps(SMALL_VISION)}"]


def bench_extraction(args):
    if args.model == "small":
        os.environ["ERNIEVIL2_CACHE"] = os.path.join(args.workdir, "cache")  # the export of the small model
        tsv, model = small_model_files(args.workdir, args.rows)
    else:
        tsv = os.path.join(args.workdir, f"rows{args.rows}_x1.tsv")
        weights = os.path.join(args.workdir, "ref.pdparams")
        exported = os.path.join(args.workdir, "exported")
        for need in (tsv, weights, exported):
            if not os.path.exists(need):
                raise SystemExit(f"{need} is missing: run benchmarks/bench_infer.py --workdir {args.workdir} first")
        model = ["-o", f"init_from_params={weights}", "-o", "text_model_config=packages/ernie_base_3.0/"
                 "ernie_config.base.json", "-o", f"inference_model_dir={exported}"]
    common = ["packages/configs/ernie_vil_base.yaml", "-o", f"vocab_file={VOCAB}", *model,
              "-o", "engine=paddle_inference", "-o", f"test_file={tsv}", "-o", "progress=false",
              "-o", f"chunk_rows={args.chunk_rows}"]
    runs = {"1 process x 2 threads": ([], ["-o", "cpu_threads=2"]),
            "2 ranks x 1 thread": (["--nproc_per_node", "2", "--log_dir", os.path.join(args.workdir, "log")],
                                   ["-o", "cpu_threads=1"])}
    results = {}
    for name, (launcher, threads) in runs.items():
        out = os.path.join(args.workdir, f"scale_{name.split()[0]}.out")
        start = time.perf_counter()
        proc = subprocess.run(["bash", "run_infer.sh", *launcher, "cpu", *common, *threads, "-o", f"output_file={out}"],
                              cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-2000:])
        results[name] = {"seconds": round(seconds, 1), "rows_per_s": round(args.rows / seconds, 2),
                         "chunks": -(-args.rows // args.chunk_rows)}
        print(name, results[name], flush=True)
    same = open(os.path.join(args.workdir, "scale_1.out"), "rb").read() == open(
        os.path.join(args.workdir, "scale_2.out"), "rb").read()
    print(json.dumps({**results, "identical_outputs": same}, indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("training-data", "extraction"))
    parser.add_argument("--workdir", default="/tmp/bench_scale")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--chunk-rows", type=int, default=40)
    parser.add_argument("--model", choices=("base", "small"), default="base",
                        help="extraction: the seed-7 Base of bench_infer.py, or a random small model made here")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    if args.what == "training-data":
        args.rows = args.rows or 10_000_000
        bench_training_data(args)
    else:
        args.rows = args.rows or 240
        bench_extraction(args)


if __name__ == "__main__":
    main()
