"""run_train.sh end to end on a tiny model: rank-count invariance (2 ranks, 2 nodes), exact kill-and-resume,
NaN handling, bad rows, config errors, and fine-tuning from an official-layout checkpoint."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from faults import fault_env
from processes import alive, descendants, kill_all, wait_until

from conftest import GOLDEN, REPO, TINY_TEXT, TINY_VISION, VOCAB, need_shared
from ernievil2.interop.convert import read_state

TERMS = ("loss", "image_image", "text_text", "image_caption", "image_tags")


def write_config(tmp_path, name="tiny.yaml", **sections):
    need_shared(VOCAB)
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "vocab_file": VOCAB,
        "seed": 3,
        "data": {"train_file": need_shared(os.path.join(GOLDEN, "golden.coco.tsv")), "batch_size": 4,
                 "num_workers": 0, "image_size": 32},
        "model": {"vision": dict(TINY_VISION), "text": dict(TINY_TEXT), "dropout": 0.0},
        "schedule": {"max_steps": 6, "log_every": 1, "save_every": 0, "warmup_steps": 2},
        # Adam's update m / (sqrt(v) + eps) turns a gradient of rounding-noise size into a full step of either
        # sign when eps is tiny, so runs that differ only in summation order (1 rank vs 2) part ways after a step;
        # an eps far above the noise keeps the update continuous in the gradient and the comparisons meaningful.
        "optimizer": {"lr": 0.002, "epsilon": 1e-3},
        "log": {"progress": False, "visualdl": False},
        # Exactness checks train in float64 (see assert_same_curves for the tolerance this buys).
        "dtype": "float64",
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return str(path)


def run_train(args, env=None, check=True, timeout=300):
    proc = subprocess.run(["bash", os.path.join(REPO, "run_train.sh"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"run_train.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# Runs that differ only in how sums are split (1 rank vs 2, 1 node vs 2) or ordered (AVX2 vs AVX-512 kernels)
# differ by rounding.  In float64 (eps 2.2e-16) one reduction over n <= 1e4 terms is off by at most ~n*eps
# ~ 2e-12 relative; six steps of a tiny model with Adam (epsilon 1e-3, lr 2e-3: an update changes by at most
# lr/epsilon = 2x its gradient's change) and a logit scale <= 100 amplify that by a few orders of magnitude at
# most, so 1e-8 leaves a wide margin above rounding and stays three orders below float32's eps (1.2e-7), where
# a real difference (a wrong negative, a missing gradient term) shows up at 1e-3 or more.
CURVE_RTOL = 1e-8


def assert_same_curves(a, b, atol=CURVE_RTOL):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b):
        for key in TERMS + ("logit_scale", "lr", "samples"):
            assert key in ra and abs(ra[key] - rb[key]) <= atol * max(1.0, abs(rb[key])), (key, ra, rb)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("queue", [False, True], ids=["in-batch", "with-queue"])
def test_two_ranks_log_the_same_losses_as_one_rank_with_the_whole_batch(tmp_path, queue):
    loss = {"queue": {"enabled": queue, "size": 32, "momentum": 0.9}}
    # The setting: every term on, dropout off, 2 ranks x 8 against 1 rank x 16.  The in-batch pair also
    # colours its views on the device (data.colour_work), where each rank colours its own half of the batch.
    colour = {"colour_work": "loader" if queue else "device"}
    one = write_config(tmp_path, "one.yaml", output_dir=str(tmp_path / "one"), loss=loss,
                       data={"batch_size": 16, **colour})
    # The queue run is launched by run_train.sh itself (no launcher options, cpu_processes=2), into a folder
    # whose name has a space: the launch plan must hand it to the launcher as one argument.
    two_dir = tmp_path / ("two ranks" if queue else "two")
    # The in-batch pair's two ranks run their towers as a static program (to_static) under DataParallel.
    two = write_config(tmp_path, "two.yaml", output_dir=str(two_dir), loss=loss, data={"batch_size": 8, **colour},
                       to_static=not queue)
    run_train([one])
    if queue:
        run_train([two, "-o", "cpu_processes=2"])
        assert (two_dir / "launch_log" / "workerlog.1").exists()
    else:
        run_train(["--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs"), two])
    single, double = metrics(tmp_path / "one"), metrics(two_dir)
    assert len(single) == 6
    assert_same_curves(double, single)
    # The weights move: a curve of constants would also "match".
    assert len({round(r["loss"], 6) for r in single}) > 1
    a = read_state(str(tmp_path / "one" / "final.pdparams"))
    b = read_state(str(two_dir / "final.pdparams"))
    # final.pdparams holds float32 copies of the float64 weights: equal values round to the same float32, so
    # the copies agree to one float32 rounding (half an ulp of the value, 2**-24 relative) plus the curves' 1e-8.
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=2.0 ** -23 + CURVE_RTOL, atol=1e-12, err_msg=name)


def test_two_nodes_on_loopback_match_one_process(tmp_path):
    one = write_config(tmp_path, "one.yaml", output_dir=str(tmp_path / "one"), loss={"negatives": "local"})
    two = write_config(tmp_path, "two.yaml", output_dir=str(tmp_path / "two"), data={"batch_size": 2},
                       loss={"negatives": "local"})
    run_train([one])
    port = free_port()
    procs = []
    for rank in (0, 1):
        args = ["bash", os.path.join(REPO, "run_train.sh"), "--master", f"127.0.0.1:{port}", "--nnodes", "2",
                "--rank", str(rank), "--nproc_per_node", "1", "--log_dir", str(tmp_path / f"node{rank}"), two]
        procs.append(subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    assert_same_curves(metrics(tmp_path / "two"), metrics(tmp_path / "one"))


def test_to_static_trains_as_eager_does(tmp_path):
    """The towers as one static program: the same losses and weights as op-by-op (eager) training, dropout
    included (its masks come from the same generator), to the rounding of sums taken in another order."""
    common = {"model": {"dropout": 0.1}, "loss": {"queue": {"enabled": True, "size": 8}}}
    eager = write_config(tmp_path, "eager.yaml", output_dir=str(tmp_path / "eager"), **common)
    static = write_config(tmp_path, "static.yaml", output_dir=str(tmp_path / "static"), to_static=True, **common)
    said = "to_static: the towers run as a static program"
    assert said not in run_train([eager]).stdout
    assert said in run_train([static]).stdout
    assert_same_curves(metrics(tmp_path / "static"), metrics(tmp_path / "eager"))
    a = read_state(str(tmp_path / "eager" / "final.pdparams"))
    b = read_state(str(tmp_path / "static" / "final.pdparams"))
    # float32 copies of float64 weights: one float32 rounding plus the curves' tolerance (as for 2 ranks vs 1); the
    # atol covers the attention's key biases, which get no gradient (softmax ignores a shift) and hold rounding
    # noise of ~1e-21.  The two agree this closely because the model's constants are float32 numbers (a static
    # program keeps Python floats as float32; QuickGELU's 1.702 once differed by 1.3e-8 between the two).
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=2.0 ** -23 + CURVE_RTOL, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("to_static", [False, True], ids=["eager", "static"])
def test_killed_run_resumed_with_auto_ends_with_identical_weights(tmp_path, to_static):
    common = {"schedule": {"max_steps": 6, "save_every": 2, "log_every": 1, "warmup_steps": 2},
              "model": {"dropout": 0.1}, "loss": {"queue": {"enabled": True, "size": 8}}, "to_static": to_static}
    straight = write_config(tmp_path, "a.yaml", output_dir=str(tmp_path / "a"), **common)
    resumed = write_config(tmp_path, "b.yaml", output_dir=str(tmp_path / "b"), **common)
    run_train([straight])
    killed = run_train([resumed], env=fault_env(ERNIEVIL2_KILL_AT_STEP=3), check=False)
    assert killed.returncode != 0
    assert not os.path.exists(tmp_path / "b" / "final.pdparams")
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["step_00000002"]
    finished = run_train([resumed, "-o", "resume=auto"])
    assert "resumed from" in finished.stdout and "step_00000002" in finished.stdout
    a = read_state(str(tmp_path / "a" / "final.pdparams"))
    b = read_state(str(tmp_path / "b" / "final.pdparams"))
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # The metrics file of the resumed run reads like the uninterrupted one (no duplicated steps).
    assert [r["step"] for r in metrics(tmp_path / "b")] == [1, 2, 3, 4, 5, 6]
    assert_same_curves(metrics(tmp_path / "b"), metrics(tmp_path / "a"), atol=0)
    # keep_last: only the newest 3 checkpoints remain.
    assert sorted(os.listdir(tmp_path / "b" / "checkpoints")) == ["step_00000002", "step_00000004",
                                                                   "step_00000006"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signals are Linux's")
def test_a_killed_rank_takes_its_data_loader_workers_with_it(tmp_path):
    """SIGKILL of a training process (an OOM kill, a scheduler's kill) ends its loader workers at once.  Paddle's
    own watchdog would notice the dead parent only between batches, after up to 5 s of waiting for work; the
    workers' parent-death signal ends them as the rank dies, which the 3 s below tells apart."""
    config = write_config(tmp_path, data={"num_workers": 2}, dtype="float32", log={"visualdl": False},
                          schedule={"max_steps": 100000, "log_every": 1, "save_every": 0})
    proc = subprocess.Popen([sys.executable, "-m", "ernievil2", "train", config], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": os.path.join(REPO, "packages")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers = set()
    try:
        log = tmp_path / "out" / "metrics.jsonl"
        wait_until(lambda: proc.poll() is not None or (log.exists() and len(log.read_text().splitlines()) >= 2
                                                       and len(descendants(proc.pid)) >= 2), timeout=240)
        assert proc.poll() is None, "the training run ended before it could be killed"
        workers = descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.time() + 3
        while time.time() < deadline and any(alive(p) for p in workers):
            time.sleep(0.05)
        assert not [p for p in workers if alive(p)]
    finally:
        kill_all(workers | {proc.pid})
        proc.wait()


@pytest.mark.parametrize("keep_last, kept", [(2, [3, 4]), (0, [1, 2, 3, 4])])
def test_checkpoints_are_pruned_to_keep_last_and_read_back(tmp_path, keep_last, kept):
    import paddle

    from ernievil2.train.checkpoints import (
        TrainingParts,
        checkpoint_dirs,
        read_checkpoint,
        write_checkpoint,
    )
    from ernievil2.train.losses import MultiViewContrastiveLoss

    def parts(seed):
        paddle.seed(seed)
        model = paddle.nn.Linear(3, 2)
        scheduler = paddle.optimizer.lr.LambdaDecay(0.1, lambda s: 1.0 / (1 + s))
        optimizer = paddle.optimizer.AdamW(learning_rate=scheduler, parameters=model.parameters())
        return TrainingParts(model=model, optimizer=optimizer, scheduler=scheduler, momentum_towers=None,
                             loss_fn=MultiViewContrastiveLoss(), scaler=None)

    saved = parts(1)
    for step in range(1, 5):
        saved.model.weight.set_value(paddle.full([3, 2], float(step)))
        saved.scheduler.step()
        write_checkpoint(str(tmp_path), step, {"step": step}, saved, keep_last=keep_last)
    dirs = checkpoint_dirs(str(tmp_path))
    assert [os.path.basename(d) for d in dirs] == [f"step_{s:08d}" for s in kept]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [os.path.basename(d) for d in dirs]  # no temporaries
    restored = parts(2)
    assert read_checkpoint(dirs[-1], restored)["step"] == 4
    np.testing.assert_array_equal(restored.model.weight.numpy(), np.full([3, 2], 4.0, np.float32))
    assert restored.scheduler.last_epoch == saved.scheduler.last_epoch


def test_persistent_non_finite_loss_stops_with_a_clear_message(tmp_path):
    cfg = write_config(tmp_path, optimizer={"lr": 1e30, "grad_clip": 0.0},
                       schedule={"max_steps": 20, "save_every": 1, "warmup_steps": 0, "max_bad_steps": 2})
    proc = run_train([cfg], check=False)
    assert proc.returncode == 1
    assert "NaN/inf for 3 consecutive steps" in proc.stderr and "last good checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("update skipped") == 3
    assert not os.path.exists(tmp_path / "out" / "final.pdparams")


def test_bad_training_rows_fail_with_file_and_line_or_are_skipped(tmp_path):
    data = tmp_path / "train.tsv"
    rows = open(os.path.join(need_shared(GOLDEN), "golden.coco.tsv"), encoding="utf-8").read().splitlines()
    rows[4] = rows[4].split("\t")[0] + "\tx1\tnot-base64!!"
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = write_config(tmp_path, data={"train_file": str(data), "shuffle": False},
                       schedule={"max_steps": 2})
    proc = run_train([cfg], check=False)
    assert proc.returncode == 1 and f"{data}:5:" in proc.stderr and "Traceback" not in proc.stderr
    run_train([cfg, "-o", "data.on_bad_row=skip"])
    skipped = sum(r["bad_rows_skipped"] for r in metrics(tmp_path / "out"))
    assert skipped == 1
    log = open(tmp_path / "out" / "bad_rows.rank0.txt", encoding="utf-8").read()
    assert f"{data}:5:" in log


def test_config_errors_name_the_key(tmp_path):
    cfg = write_config(tmp_path)
    for override, expected in [("data.bath_size=3", "unknown override key 'data.bath_size' (did you mean "
                                                    "data.batch_size?)"),
                               ("loss.weights.image_image=-1", "loss.weights.image_image"),
                               ("amp.mode=fp8", "'amp.mode' must be one of off, fp16, bf16"),
                               ("resume=/nonexistent/ckpt", "'resume' must be auto or a checkpoint directory"),
                               ("cpu_processes=0", "'cpu_processes' must be >= 1")]:
        proc = run_train([cfg, "-o", override], check=False)
        assert proc.returncode == 2 and expected in proc.stderr, (override, proc.stderr[-500:])
        assert "Traceback" not in proc.stderr


def test_fine_tuning_from_an_official_checkpoint_writes_official_weights(tmp_path, reference_checkpoint,
                                                                        golden_dir):
    # lr 0 and no weight decay: the trained file must reproduce the official embeddings exactly, which proves
    # the trainer loads the official layout and writes final.pdparams in it.
    cfg = write_config(tmp_path, data={"batch_size": 2, "image_size": 224}, dtype="float32",  # lr 0: exact anyway
                       model={"vision": "vit_b16", "text": os.path.join(REPO, "packages", "ernie_base_3.0",
                                                                         "ernie_config.base.json"),
                              "init_from_params": reference_checkpoint},
                       optimizer={"lr": 0.0, "weight_decay": 0.0},
                       loss={"weights": {"image_image": 0.0, "text_text": 0.0, "image_tags": 0.0}},
                       schedule={"max_steps": 1, "warmup_steps": 0})
    run_train([cfg])
    final = str(tmp_path / "out" / "final.pdparams")
    out = str(tmp_path / "emb.out")
    proc = subprocess.run(["bash", os.path.join(REPO, "run_infer.sh"), "cpu", str(tmp_path / "out" / "infer.yaml"),
                           "-o", f"test_file={os.path.join(golden_dir, 'golden.coco.tsv')}", "-o",
                           f"output_file={out}", "-o", "progress=false", "-o", "infer_batch_size=16"],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = [line.split("\t") for line in open(out, encoding="utf-8")]
    ref = [line.split("\t") for line in open(os.path.join(golden_dir, "official_embeddings.out"), encoding="utf-8")]
    for col in (0, 1):
        a = np.array([[float(x) for x in r[col].split()] for r in ours])
        b = np.array([[float(x) for x in r[col].split()] for r in ref])
        assert (a * b).sum(1).min() >= 0.99999
    assert set(read_state(final)) == set(read_state(reference_checkpoint))


def test_launch_plan_without_launcher_options():
    from ernievil2.train.config import launch_plan, load_train_config
    base = os.path.join(REPO, "packages", "configs", "demo.yaml")

    def plan(gpus, *overrides):
        return launch_plan(load_train_config(base, ["output_dir=/runs/a b", *overrides]), gpus)

    logs = ("--log_dir", os.path.join("/runs/a b", "launch_log"))
    assert plan(0, "cpu_processes=1") == ("single",)
    assert plan(0, "cpu_processes=3") == ("launch", "--nproc_per_node", "3") + logs
    assert plan(1, "cpu_processes=3") == ("single",)  # one GPU: one process on it
    assert plan(4) == ("launch",) + logs  # the launcher starts one rank per visible GPU
    assert plan(4, "device=cpu", "cpu_processes=2") == ("launch", "--nproc_per_node", "2") + logs
