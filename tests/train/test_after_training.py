"""After training: the test split is embedded and evaluated, and the optional steps (zero-shot, search) that
cannot run because a part is missing leave a note, never a failed run."""
import json
import os
import sys

import pytest
import yaml

from conftest import GOLDEN, TINY_TEXT, TINY_VISION, VOCAB, need_shared
from ernievil2.cli.train import main as train_main


def tiny_run_config(tmp_path, **extra):
    need_shared(VOCAB)
    data = need_shared(os.path.join(GOLDEN, "golden.coco.tsv"))
    cfg = {"output_dir": str(tmp_path / "out"), "vocab_file": VOCAB, "seed": 3, "device": "cpu",
           "data": {"train_file": data, "test_file": data, "batch_size": 4, "num_workers": 0, "image_size": 32,
                    "eval_batch_size": 4},
           "model": {"vision": dict(TINY_VISION), "text": dict(TINY_TEXT), "dropout": 0.0},
           "schedule": {"max_steps": 2, "log_every": 1, "save_every": 0, "warmup_steps": 1},
           "log": {"progress": False, "visualdl": False}, **extra}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


def test_a_missing_faiss_or_zeroshot_file_is_a_note_and_the_run_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` raises ImportError, as when not installed
    config = tiny_run_config(tmp_path, search={"queries": ["一只猫"]},
                             zeroshot={"images": str(tmp_path / "absent.tsv"), "labels": str(tmp_path / "l.txt")})
    assert train_main([config]) == 0
    out = capsys.readouterr().out
    out_dir = tmp_path / "out"
    assert (out_dir / "final.pdparams").exists() and (out_dir / "test_embeddings.npz").exists()
    assert "| Text2Image |" in out  # the test split was embedded and evaluated
    kept = json.loads((out_dir / "test_metrics.json").read_text(encoding="utf-8"))  # and its recall kept
    assert f"| Text2Image | {kept['text2image']['R@1']:5.2f} |" in out
    assert "note: search left out: faiss is not installed" in out
    assert f"note: zero-shot classification left out: file not found (zeroshot.images: {tmp_path}/absent.tsv" in out
    assert not (out_dir / "search_index").exists() and not (out_dir / "zeroshot_predictions.jsonl").exists()


def test_with_faiss_the_queries_are_answered_from_the_test_images(tmp_path, capsys):
    pytest.importorskip("faiss", reason="faiss-cpu is not installed")
    from ernievil2.train.config import load_train_config
    from ernievil2.workflow.after_training import after_training
    config = tiny_run_config(tmp_path, search={"queries": ["一只猫", "a dog"], "top_k": 2})
    assert train_main([config]) == 0
    capsys.readouterr()
    result = after_training(str(tmp_path / "out"), load_train_config(config), "cpu")  # again, as a library call
    assert result.notes == [] and result.index_dir == str(tmp_path / "out" / "search_index")
    assert [query for query, _ in result.searches] == ["一只猫", "a dog"]
    assert all(len(hits) == 2 for _, hits in result.searches)  # search.top_k
    assert set(result.metrics) >= {"text2image", "image2text"}
