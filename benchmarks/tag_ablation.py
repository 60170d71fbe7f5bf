"""The fourth view's ablation on the demo (docs/tagger.md): ground-truth tags vs tagger tags vs no tags, per seed.

    python benchmarks/tag_ablation.py --tags tagger_tags.tsv [--seeds 0 1 2] [--workdir ablation] [-o key=value ...]

Run from the folder that holds (or will hold) ./demo_data, after tagging the training images (docs/tagger.md,
steps 0-1).  Each arm is `bash run_train.sh packages/configs/demo.yaml` with the same seed and data; only the
fourth view's text differs:
  * gt:      the generator's tags (the 4th column of demo_data/train.tsv, the demo as shipped);
  * tagger:  a 3-column copy of the train split plus `data.tags_file` = --tags;
  * notags:  the 3-column copy alone (the caption stands in for the tag view).
A run whose WORKDIR/ARM_sSEED/test_metrics.json exists is not run again, so the script resumes where it stopped.
Prints a Markdown table: test R@1/5/10 both ways per arm, as mean and sample standard deviation over the seeds,
then every run's numbers.  `-o` options go to every run (e.g. -o schedule.max_steps=300).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ARMS = ("gt", "tagger", "notags")
COLUMNS = [("text2image", k) for k in ("R@1", "R@5", "R@10")] + [("image2text", k) for k in ("R@1", "R@5", "R@10")]


def three_column_copy(train_file, out_file):
    """The train split without its tag column (what users' data look like)."""
    if os.path.exists(out_file):
        return
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    with open(train_file, encoding="utf-8") as src, open(out_file + ".tmp", "w", encoding="utf-8") as dst:
        for line in src:
            dst.write("\t".join(line.rstrip("\n").split("\t")[:3]) + "\n")
    os.replace(out_file + ".tmp", out_file)


def arm_overrides(arm, tags, notags_train):
    if arm == "gt":
        return []
    common = ["-o", f"data.train_file={notags_train}", "-o", "data.generate_demo_data=false"]
    return common + (["-o", f"data.tags_file={tags}"] if arm == "tagger" else [])


def run_arm(arm, seed, args, notags_train):
    out_dir = os.path.join(args.workdir, f"{arm}_s{seed}")
    metrics_file = os.path.join(out_dir, "test_metrics.json")
    if not os.path.exists(metrics_file):
        command = ["bash", os.path.join(REPO, "run_train.sh"), os.path.join(REPO, "packages/configs/demo.yaml"),
                   "-o", f"output_dir={out_dir}", "-o", f"seed={seed}", "-o", "log.progress=false"]
        command += arm_overrides(arm, args.tags, notags_train)
        for option in args.o:
            command += ["-o", option]
        started = time.time()
        with open(out_dir + ".log", "w", encoding="utf-8") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        if code != 0 or not os.path.exists(metrics_file):
            sys.exit(f"{arm} seed {seed} failed (exit {code}): see {out_dir}.log")
        print(f"{arm} seed {seed}: {time.time() - started:.0f} s", file=sys.stderr)
    with open(metrics_file, encoding="utf-8") as f:
        return json.load(f)


def row(values):
    return [statistics.mean(v) for v in values], [statistics.stdev(v) if len(v) > 1 else float("nan")
                                                  for v in values]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", required=True, help="the tagger's tags file for the training images")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="ablation")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("-o", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    notags_train = os.path.join(args.workdir, "demo_notags", "train.tsv")
    results = {}
    for seed in args.seeds:
        for arm in args.arms:
            if arm != "gt":
                three_column_copy("demo_data/train.tsv", notags_train)  # the gt run generated demo_data
            results[arm, seed] = run_arm(arm, seed, args, notags_train)
    header = "| arm | " + " | ".join(f"{d} {k}" for d, k in COLUMNS) + " | mean |"
    print(f"Test split, mean ± sample std over seeds {', '.join(map(str, args.seeds))}:\n")
    print(header)
    print("|" + "---|" * (len(COLUMNS) + 2))
    for arm in args.arms:
        per_seed = [[results[arm, s][d][k] for s in args.seeds] for d, k in COLUMNS]
        per_seed.append([statistics.mean(results[arm, s][d][k] for d, k in COLUMNS) for s in args.seeds])
        means, stds = row(per_seed)
        print(f"| {arm} | " + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(means, stds)) + " |")
    print("\nEvery run:\n")
    print(header.replace("| arm |", "| arm | seed |"))
    print("|" + "---|" * (len(COLUMNS) + 3))
    for arm in args.arms:
        for s in args.seeds:
            values = [results[arm, s][d][k] for d, k in COLUMNS]
            print(f"| {arm} | {s} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {statistics.mean(values):.2f} |")


if __name__ == "__main__":
    main()
