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
from processes import alive, descendants, wait_until

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


def test_a_rank_that_starts_after_rank_0_finished_the_job_leaves_no_work_behind(job):
    """On a busy machine a rank of a launch can reach the work folder after rank 0 claimed, embedded and merged every
    chunk and removed the folder: it must neither make the folder again nor embed the input into it (CI saw a
    leftover emb.out.work).  A rank started after the output was written (a new run) still works as usual."""
    config, tmp = job
    run_infer(config, tmp / "ref" / "emb.out")
    out, work = tmp / "late" / "emb.out", tmp / "late" / "emb.out.work"
    late = start_infer(config, out, fault_env(ENV, ERNIEVIL2_START_AFTER=out), rank=1)  # held until rank 0 is done
    rank0 = start_infer(config, out, ENV, rank=0)
    _, err = rank0.communicate(timeout=300)
    assert rank0.returncode == 0, err[-3000:]
    stdout, stderr = late.communicate(timeout=300)
    assert late.returncode == 0, stderr[-3000:]
    assert "nothing left to do" in stdout
    assert sorted(os.listdir(tmp / "late")) == ["emb.npz", "emb.out"] and not work.exists()
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "ref" / name, tmp / "late" / name), name
    again = start_infer(config, out, ENV, rank=1)  # started after the output: a rank of the next run, it embeds
    stdout, stderr = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing left to do" not in stdout, stderr[-3000:]
    assert len(list(work.glob("chunk_*.npz"))) == 12  # (left for that run's rank 0 to merge)


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
    ranks = subprocess.run(["pgrep", "-f", "cli/launch.py infer"], capture_output=True, text=True).stdout.split()
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
    from ernievil2.fileio import read_strings
    assert read_strings(a, "ids") == read_strings(b, "ids") == [f"p{i:02d}.png" for i in range(23)]
    np.testing.assert_array_equal(a["embeddings"], b["embeddings"])
    assert json.loads(a["provenance"].item())["embed_dim"] == 32


# ---------------------------------------------------------------- claims, killed runs, leftovers

def made_by(chunk_file):
    with np.load(chunk_file) as z:
        return json.loads(z["meta"].item())["made_by"]


def start_infer(config, out, env, rank=None):
    """One `python -m ernievil2 infer` process; with `rank`, as rank `rank` of 2 sharing the work folder."""
    ranks = {} if rank is None else {"PADDLE_TRAINER_ID": str(rank), "PADDLE_TRAINERS_NUM": "2"}
    return subprocess.Popen([sys.executable, "-m", "ernievil2", "infer", str(config), "-o", f"output_file={out}"],
                            cwd=REPO, env={**env, **ranks}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_a_killed_rank_leaves_its_chunks_to_the_other_which_finishes_the_job(job):
    config, tmp = job
    run_infer(config, tmp / "ref" / "emb.out")
    out, work = tmp / "pair" / "emb.out", tmp / "pair" / "emb.out.work"
    env = fault_env(ENV, ERNIEVIL2_SLOW_CHUNKS=0.4)  # each chunk takes 0.4 s longer, claimed and unfinished
    rank0, rank1 = (start_infer(config, out, env, rank) for rank in (0, 1))
    try:
        wait_until(lambda: any(made_by(f)["pid"] == rank1.pid for f in work.glob("chunk_*.npz")))
        os.kill(rank1.pid, signal.SIGKILL)  # mid-run, holding a claim: rank 0 must take it over
        stdout, stderr = rank0.communicate(timeout=300)
    finally:
        for proc in (rank0, rank1):
            proc.kill()
    assert rank0.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert "taking over the claim" in stderr and f"pid {rank1.pid} (gone)" in stderr
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "ref" / name, tmp / "pair" / name), name
    assert not work.exists()


def test_two_runs_of_one_output_at_once_share_the_work_and_neither_hangs(job):
    config, tmp = job
    run_infer(config, tmp / "ref" / "emb.out")
    out = tmp / "twice" / "emb.out"
    env = fault_env(ENV, ERNIEVIL2_SLOW_CHUNKS=0.3)
    runs = [start_infer(config, out, env) for _ in range(2)]  # both rank 0 of 1
    try:
        results = [run.communicate(timeout=300) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for run, (stdout, stderr) in zip(runs, results):
        assert run.returncode == 0, stdout[-2000:] + stderr[-3000:]
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "ref" / name, tmp / "twice" / name), name
    assert sum("another run of the same job merged" in stdout for stdout, _ in results) == 1


def test_truncated_and_garbage_chunks_and_dead_temporaries_are_redone_with_a_note(job):
    from ernievil2.fileio import temp_path_for
    config, tmp = job
    run_infer(config, tmp / "ref" / "emb.out")
    out, work = tmp / "run" / "emb.out", tmp / "run" / "emb.out.work"
    run_infer(config, out, env=fault_env(ENV, ERNIEVIL2_STOP_AFTER_CHUNKS=4), check=False)
    chunks = sorted(work.glob("chunk_*.npz"))
    assert len(chunks) == 4
    data = chunks[1].read_bytes()
    chunks[1].write_bytes(data[:len(data) // 2])             # a copy cut short
    chunks[2].write_bytes(b"PK\x03\x04" + bytes(60))          # zip magic, then nothing
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True,
                          text=True).stdout.strip()           # a pid that surely ended
    part = temp_path_for(str(work / "chunk_00000005.npz"), ".text").replace(f"-{os.getpid()}.", f"-{dead}.")
    with open(part, "wb") as f:
        f.write(b"half a chunk of a dead run")
    resumed = run_infer(config, out)
    assert "Traceback" not in resumed.stderr
    assert resumed.stderr.count("unreadable") == 2, resumed.stderr[-3000:]
    assert "reused 16 rows" in resumed.stdout  # chunks 0 and 3
    for name in ("emb.out", "emb.npz"):
        assert same_files(tmp / "ref" / name, tmp / "run" / name), name
    assert not work.exists()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_ranks_and_their_workers_die_with_the_launcher(job):
    config, tmp = job
    work = tmp / "k" / "emb.out.work"
    cmd = ["bash", os.path.join(REPO, "run_infer.sh"), "--nproc_per_node", "2", "--log_dir", str(tmp / "log"),
           "cpu", str(config), "-o", f"output_file={tmp / 'k' / 'emb.out'}", "-o", "num_workers=1"]
    family = set()
    # The launcher picks a free port itself; on a busy machine a start can lose it to another process and end at
    # once, so a start that ends before its first chunks is retried (once), with its output kept for the message.
    for attempt in range(2):
        log = tmp / f"launch_{attempt}.txt"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=fault_env(ENV, ERNIEVIL2_SLOW_CHUNKS=0.5),
                                    start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: proc.poll() is not None or (work.is_dir() and len(list(work.glob("chunk_*.npz"))) >= 2))
        if proc.poll() is None:
            break
    assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
    try:
        family = descendants(proc.pid)
        assert len(family) >= 4  # 2 ranks under the launcher (run_infer.sh execs it) and their worker processes
        os.killpg(proc.pid, signal.SIGKILL)  # kill -KILL -- -PGID of run_infer.sh
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(p) for p in family):
            time.sleep(0.1)
        assert not [p for p in family if alive(p)]
    finally:
        for p in family | {proc.pid}:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        proc.wait()


class FailingEncoder:
    """The tiny model's encoder that fails on its `fail_at`-th text batch (a crash after some chunks)."""

    def __init__(self, precision="fp32", fail_at=None):
        from conftest import make_tiny_model
        from ernievil2.infer.engines import EagerEncoder
        self.inner, self.precision, self.fail_at, self.calls = EagerEncoder(make_tiny_model(seed=5)), precision, \
            fail_at, 0
        self.embed_dim = self.inner.embed_dim

    def encode_text(self, ids):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("crash")
        return self.inner.encode_text(ids)


def test_chunks_are_known_by_content_and_by_what_ran(tiny, tmp_path):
    """Copies of the input and weights elsewhere (other paths, other times) share chunks; another precision does
    not."""
    import shutil

    from ernievil2.infer.gallery import load_embed_config, run_embed
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir()
    (here / "q.txt").write_text("".join(f"查询{i}{'文' * i}\n" for i in range(12)), encoding="utf-8")
    shutil.copytree(here, there)
    shutil.copy(tiny["init_from_params"], there / "w.pdparams")
    os.utime(there / "q.txt", (1_000_000, 1_000_000))
    out = str(tmp_path / "out" / "q.npz")

    def embed(folder, weights, encoder):
        cfg = load_embed_config(None, list({**tiny, "texts": str(folder / "q.txt"), "output_file": out,
                                            "init_from_params": weights, "chunk_rows": 4}.items()))
        return run_embed(cfg, encoder=encoder)
    with pytest.raises(RuntimeError):
        embed(here, tiny["init_from_params"], FailingEncoder(fail_at=3))  # leaves chunks 0 and 1
    summary = embed(there, str(there / "w.pdparams"), FailingEncoder())
    assert (summary.reused, summary.stale_chunks, summary.written) == (8, 0, 12)
    reference = np.load(out)["embeddings"]
    with pytest.raises(RuntimeError):
        embed(here, tiny["init_from_params"], FailingEncoder(fail_at=3))
    summary = embed(here, tiny["init_from_params"], FailingEncoder(precision="bf16"))  # as if bf16 had run
    assert (summary.reused, summary.stale_chunks, summary.written) == (0, 2, 12)
    np.testing.assert_array_equal(np.load(out)["embeddings"], reference)


def test_claims_skip_held_chunks_and_another_jobs_live_run_is_refused_by_name(tmp_path):
    from ernievil2.errors import InputError
    from ernievil2.infer.sharding import ChunkedRun
    out = str(tmp_path / "o.npz")
    first, second = ChunkedRun(out, "job-a", 15, 5), ChunkedRun(out, "job-a", 15, 5)
    assert first.start() == second.start() == (0, 0)
    assert (first.claim_next(), second.claim_next()) == (0, 1)  # a held chunk is skipped, not waited for
    other = ChunkedRun(out, "job-b", 15, 5)
    with pytest.raises(InputError, match=f"another run .* pid {os.getpid()}"):
        other.start()
    first.release()
    second.release()
    assert other.start() == (0, 0) and other.claim_next() == 0  # nothing held any more: the folder is free
    other.remove()
    assert not os.path.exists(out + ".work")
