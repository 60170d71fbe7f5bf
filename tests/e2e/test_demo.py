"""The demo end to end, shortened: data generation, multi-view training, run_infer.sh, eval_retri.py,
zero-shot classification."""
import json
import subprocess
import sys

from conftest import REPO


def test_demo_trains_and_its_held_out_recall_is_far_above_chance(tmp_path):
    data = tmp_path / "demo_data"
    out = tmp_path / "out"
    proc = subprocess.run(
        ["bash", "run_train.sh", "packages/configs/demo.yaml", "-o", f"output_dir={out}",
         "-o", f"data.train_file={data}/train.tsv", "-o", f"data.dev_file={data}/dev.tsv",
         "-o", f"data.test_file={data}/test.tsv", "-o", f"vocab_file={data}/vocab.txt",
         "-o", f"zeroshot.images={data}/zeroshot_colours.tsv", "-o", f"zeroshot.labels={data}/zeroshot_labels.txt",
         "-o", f"zeroshot.templates={data}/zeroshot_templates.txt",
         "-o", "schedule.max_steps=120", "-o", "schedule.eval_every=0", "-o", "log.progress=false"],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "generated the demo data set" in proc.stdout
    assert "| Text2Image |" in proc.stdout  # the table printed by the eval step
    for name in ("final.pdparams", "final.safetensors", "metrics.jsonl", "infer.yaml", "test_embeddings.out",
                 "test_embeddings.npz"):
        assert (out / name).exists(), name
    result = subprocess.run([sys.executable, "eval_retri.py", "--json", "--folds", "5",
                             str(out / "test_embeddings.npz")], cwd=REPO, capture_output=True, text=True, check=True)
    metrics = json.loads(result.stdout)
    assert metrics["counts"] == {"text_queries": 2500, "image_queries": 500, "folds": 5}
    # 500 test images x 5 captions, ranked as 5 folds of 100: chance is R@1 = 1%, R@5 = 5%.
    assert metrics["text2image"]["R@5"] >= 20, metrics
    assert metrics["image2text"]["R@5"] >= 20, metrics
    losses = [json.loads(line)["loss"] for line in open(out / "metrics.jsonl", encoding="utf-8")]
    assert losses[-1] < losses[0] - 1.0
    # Zero-shot colour classification of the single-colour test images: 8 classes, chance 12.5%.
    predictions = [json.loads(line) for line in open(out / "zeroshot_predictions.jsonl", encoding="utf-8")]
    assert len(predictions) >= 20 and "| all " in proc.stdout
    top1 = sum(p["predictions"][0]["label"] == p["label"] for p in predictions) / len(predictions)
    # At chance, correct answers out of 112 are Binomial(112, 1/8): mean 14, std 3.5; 30% (34) is 5.7 std above
    # it (p < 1e-6), a bound for "learned the colours" that no CPU's rounding moves (120 steps give ~50%).
    assert top1 >= 0.3, top1
    # ... and a search index over the test images, queried with the config's two queries (top 3 each).
    assert (out / "search_index" / "manifest.json").exists()
    ranked = [line for line in proc.stdout.splitlines() if line.lstrip().startswith(("1  ", "2  ", "3  "))]
    assert len(ranked) == 6 and all("test_" in line for line in ranked), proc.stdout[-3000:]
