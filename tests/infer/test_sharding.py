"""Sharded, resumable extraction: 1 rank, 2 ranks and 2 "nodes" on loopback give byte-identical outputs; a run
killed at any point (SIGKILL) resumes from its finished chunks; a changed input, config or weights file is not
mixed with old chunks; shard directories and globs as input; the same for embed."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import yaml
from faults import fault_env

from conftest import REPO

ENV = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))


def jpeg_b64(seed):
    rgb = np.random.default_rng(seed).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    return base64.b64encode(cv2.imencode(".jpg", rgb)[1].tobytes()).decode()


@pytest.fixture
def job(tiny, tmp_path):
    """A 90-row input (captions of varied length, images shared by several rows, a blank line) and a config
    that cuts it into chunks of 8 rows."""
    rows = [f"第{i}行{'的文字' * (i % 9)}\t{i % 31}\t{jpeg_b64(i % 31)}" for i in range(90)]
    rows.insert(40, "")
    tsv = tmp_path / "in.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "test_file": str(tsv), "chunk_rows": 8, "cpu_threads": 1,
                                      "infer_batch_size": 3, "text_sort_window": 5}, allow_unicode=True),
                      encoding="utf-8")
    return config, tmp_path


def run_infer(config, out, *launcher, overrides=(), env=None, check=True):
    cmd = ["bash", os.path.join(REPO, "run_infer.sh"), *launcher, "cpu", str(config), "-o", f"output_file={out}",
           *[x for o in overrides for x in ("-o", o)]]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**ENV, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def same_files(a, b):
    return open(a, "rb").read() == open(b, "rb").read()


def test_one_rank_two_ranks_and_two_nodes_write_identical_files(job):
    config, tmp = job
    run_infer(config, tmp / "one" / "emb.out")
    two = run_infer(config, tmp / "two" / "emb.out", "--nproc_per_node", "2", "--log_dir", str(tmp / "log2"))
    assert "ranks: 2" in two.stdout and "rows read: 90, written: 90" in two.stdout
    port = free_port()
    nodes = [subprocess.Popen(["bash", os.path.join(REPO, "run_infer.sh"), "--master", f"127.0.0.1:{port}",
                               "--nnodes", "2", "--rank", str(r), "--log_dir", str(tmp / f"lognode{r}"), "cpu",
                               str(config), "-o", f"output_file={tmp / 'nodes' / 'emb.out'}"], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=600) == 0, node.stderr.read().decode()[-3000:]
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "one" / name, tmp / "two" / name), name
        assert same_files(tmp / "one" / name, tmp / "nodes" / name), name
    assert sorted(os.listdir(tmp / "two")) == ["emb.npz", "emb.out"]  # the work folder is gone
    from ernievil2.eval.sidecar import matching_sidecar
    assert matching_sidecar(str(tmp / "two" / "emb.out"))  # the sidecar certifies the merged text file


def test_sigkill_of_one_rank_then_resume_gives_the_same_output(job):
    config, tmp = job
    run_infer(config, tmp / "ref" / "emb.out")
    out = tmp / "killed" / "emb.out"
    work = tmp / "killed" / "emb.out.work"
    slow = fault_env(ENV, ERNIEVIL2_SLOW_CHUNKS=0.4)  # seconds per chunk, so that the kill lands mid-run
    cmd = ["bash", os.path.join(REPO, "run_infer.sh"), "--nproc_per_node", "2", "--log_dir", str(tmp / "log"),
           "cpu", str(config), "-o", f"output_file={out}"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=slow, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (work.is_dir() and len(list(work.glob("chunk_*.npz"))) >= 3):
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-f", "infer_launch.py"], capture_output=True, text=True).stdout.split()
    os.kill(int(ranks[-1]), signal.SIGKILL)  # one rank dies; the launcher stops the others
    proc.wait(timeout=120)
    os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    finished = len(list(work.glob("chunk_*.npz")))
    assert not out.exists() and 3 <= finished < 12
    resumed = run_infer(config, out)
    reused = int(resumed.stdout.split("reused ")[1].split()[0])
    assert reused >= 3 * 8, resumed.stdout
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "ref" / name, tmp / "killed" / name), name
    assert not work.exists()


def test_stale_chunks_are_refused_and_not_mixed_in(job):
    config, tmp = job
    out = tmp / "run" / "emb.out"
    run_infer(config, out, env=fault_env(ENV, ERNIEVIL2_STOP_AFTER_CHUNKS=4), check=False)  # leaves 4 chunks
    assert len(list((tmp / "run" / "emb.out.work").glob("chunk_*.npz"))) == 4
    changed = run_infer(config, out, overrides=["max_text_seqlen=20"])  # another config: old chunks are stale
    assert "refused 4 chunk(s)" in changed.stdout and "reused" not in changed.stdout
    run_infer(config, tmp / "fresh" / "emb.out", overrides=["max_text_seqlen=20"])
    assert same_files(out, tmp / "fresh" / "emb.out")


def test_a_shard_directory_and_a_glob_as_test_file(job):
    config, tmp = job
    lines = [line for line in (tmp / "in.tsv").read_text(encoding="utf-8").splitlines() if line]
    shards = tmp / "shards"
    shards.mkdir()
    for k in range(3):
        (shards / f"part{k}.tsv").write_text("\n".join(lines[k * 30:(k + 1) * 30]) + "\n", encoding="utf-8")
    run_infer(config, tmp / "one" / "emb.out")
    run_infer(config, tmp / "dir" / "emb.out", overrides=[f"test_file={shards}"])
    run_infer(config, tmp / "glob" / "emb.out", overrides=[f"test_file={shards}/part*.tsv"])
    assert same_files(tmp / "one" / "emb.out", tmp / "dir" / "emb.out")
    assert same_files(tmp / "one" / "emb.out", tmp / "glob" / "emb.out")


def test_embed_is_sharded_alike(tiny, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(23):
        cv2.imwrite(str(folder / f"p{i:02d}.png"), np.random.default_rng(i).integers(0, 255, (20, 30, 3), np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "chunk_rows": 5, "cpu_threads": 1}, allow_unicode=True),
                      encoding="utf-8")
    outs = {}
    for name, launcher in (("one", []), ("two", ["--nproc_per_node", "2", "--log_dir", str(tmp_path / "log")])):
        outs[name] = tmp_path / name / "g.npz"
        cmd = [sys.executable, "-m", "ernievil2", "embed", *launcher, str(config), "-o", f"images={folder}",
               "-o", f"output_file={outs[name]}"]
        proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    a, b = np.load(outs["one"]), np.load(outs["two"])
    assert list(a["ids"]) == list(b["ids"]) == [f"p{i:02d}.png" for i in range(23)]
    np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
    assert json.loads(a["provenance"].item())["embed_dim"] == 32
