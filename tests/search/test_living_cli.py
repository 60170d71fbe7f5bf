"""The commands as a user types them: `index sync` creates and updates an index from a folder (bad images skipped
and counted), `search` with --where, composed terms and --queries (JSONL out) equals the library; refused
sources, unknown filter fields and empty composed queries are one-line errors."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO

pytest.importorskip("faiss", reason="faiss-cpu is not installed")


def command(*args):
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))
    return subprocess.run([sys.executable, "-m", "ernievil2", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


def test_sync_and_search_commands(tiny, tmp_path):
    photos = tmp_path / "photos"
    for i in range(8):
        folder = photos / ("red" if i < 4 else "blue")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"p{i}.png"), np.random.default_rng(i).integers(0, 255, (30, 40, 3), np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "engine": "eager", "on_bad_row": "skip"}, allow_unicode=True),
                      encoding="utf-8")
    index = tmp_path / "index"
    run = command("index", "sync", config, index, "--source", photos)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "added 8, changed 0, removed 0, unchanged 0, skipped 0" in run.stdout and "version 1" in run.stdout
    (photos / "red" / "broken.png").write_bytes(b"not an image")
    os.remove(photos / "blue" / "p7.png")
    run = command("index", "sync", config, index)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "added 1, changed 0, removed 1, unchanged 7, skipped 1" in run.stdout and "version 2" in run.stdout
    run = command("index", "sync", config, index, "--source", tmp_path)
    assert run.returncode == 2 and run.stderr.count("\n") == 1 and "was built from" in run.stderr

    from ernievil2.search.index import SearchIndex
    from ernievil2.search.query import search_batch
    library = SearchIndex(str(index))
    assert library.ids == [f"blue/p{i}.png" for i in (4, 5, 6)] + [f"red/p{i}.png" for i in range(4)]
    queries = tmp_path / "q.jsonl"
    lines = [{"text": "红色的圆形"}, {"image": str(photos / "red" / "p2.png"), "k": 2},
             {"text": "蓝色", "where": {"folder": "blue"}},
             {"terms": [{"text": "红色"}, {"image": str(photos / "blue" / "p5.png"), "weight": 0.5}]}]
    queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in lines), encoding="utf-8")
    run = command("search", config, index, "--queries", queries, "-k", "3", "--where", "size>=1")
    assert run.returncode == 0, run.stderr[-2000:]
    got = [json.loads(line) for line in run.stdout.splitlines()]
    assert [g["query"] for g in got] == lines
    from conftest import make_tiny_model
    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.infer.engines import EagerEncoder
    model = Model(EagerEncoder(make_tiny_model(seed=5)), ErnieTokenizer.from_file(tiny["vocab_file"]), image_size=32)
    want = search_batch(model, library, lines, k=3, where={"size": {"gte": 1}})
    assert [[h["id"] for h in g["results"]] for g in got] == [[h["id"] for h in r] for r in want]
    assert got[1]["results"][0]["id"] == "red/p2.png" and len(got[1]["results"]) == 2
    assert all(h["metadata"]["folder"] == "blue" for h in got[2]["results"])

    run = command("search", config, index, "--text", "红色", "--minus-text", "雨天::0.5", "--where", "folder=red",
                  "-k", "2", "--json")
    assert run.returncode == 0, run.stderr[-2000:]
    want = search_batch(model, library, [{"terms": [{"text": "红色"}, {"text": "雨天", "weight": -0.5}]}], k=2,
                        where={"folder": "red"})[0]
    assert [h["id"] for h in json.loads(run.stdout)] == [h["id"] for h in want]
    for args, message in [(("--text", "x", "--where", "colour=red"), "unknown filter field 'colour'"),
                          (("--text", "a", "--minus-text", "a"), "the terms cancel out"),
                          ((), "give --text/--image terms or --queries FILE")]:
        run = command("search", config, index, "-k", "3", *args)
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr
