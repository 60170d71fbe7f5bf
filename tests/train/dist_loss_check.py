"""Mini contrastive training run used by tests/test_losses.py to check 2 ranks x B == 1 rank x 2B.

Run under ``python -m paddle.distributed.launch --nproc_per_node 2 tests/dist_loss_check.py --out DIR``
(each rank takes its half of every global batch), or import :func:`run_case` and call it in a single
process on the whole batch.  Every case runs a few steps of: forward through two tiny linear "towers"
(in ``paddle.DataParallel`` when distributed, so parameter gradients are averaged as in training),
the multi-view loss, backward, SGD step, temperature clamp, and (queue cases) momentum update +
enqueue of gathered momentum keys.  Rank 0 writes one ``<case>.npz`` per case with the per-step
loss values (of every rank), embedding gradients (gathered, divided by W: the convention of
ernievil2.train.distributed), parameter gradients after DataParallel averaging, and the final state.
"""
import argparse
import os

import numpy as np
import paddle

from ernievil2.model.configs import INITIAL_TEMPERATURE as TEMPERATURE_INIT
from ernievil2.train import distributed as edist
from ernievil2.train.loss_config import TERMS
from ernievil2.train.losses import (
    MultiViewContrastiveLoss,
    clamp_logit_scale_,
    make_momentum_copy,
    momentum_update_,
)

GLOBAL_BATCH = 8
IN_DIM, EMBED_DIM = 6, 5
STEPS = 4  # with queue size 16 = 2 global batches: empty, half, full, wrapped
VIEWS = ("image_view1", "image_view2", "text_view1", "text_view2", "tags")
CASES = {
    "full": {"negatives": "full", "queue": False},
    "local": {"negatives": "local", "queue": False},
    "full_queue": {"negatives": "full", "queue": True},
    "local_queue": {"negatives": "local", "queue": True},
    # duplicates across the ranks' halves (rows 1 and 6 one image, rows 2 and 5 one caption) and in the queue
    "full_masked": {"negatives": "full", "queue": False, "masked": True},
    "local_queue_masked": {"negatives": "local", "queue": True, "masked": True},
}


def identities(step):
    """Global image / caption / tag keys of a step's rows, with duplicates inside the batch and, through the
    repeating image ids, between the batch and the queue."""
    image = np.array([0, 1, 2, 3, 4, 5, 1, 7]) + 100 * (step % 2)
    caption = np.array([10, 11, 12, 13, 14, 12, 16, 17]) + 100 * step
    return {"image": image, "caption": caption, "tags": caption + 1000}


class Towers(paddle.nn.Layer):
    """Two linear towers and the temperature, standing in for the dual encoder."""

    def __init__(self, rng):
        super().__init__()
        self.image = paddle.nn.Linear(IN_DIM, EMBED_DIM)
        self.text = paddle.nn.Linear(IN_DIM, EMBED_DIM)
        for p in self.parameters():
            p.set_value(rng.standard_normal(p.shape))
        self.temperature = self.create_parameter(
            [1], dtype="float64", default_initializer=paddle.nn.initializer.Constant(TEMPERATURE_INIT))

    def forward(self, xs):
        # The temperature leaves forward through an op (clone): Paddle 3.3's DataParallel reducer fails
        # with "parameter has been ready before" if a parameter is used outside the wrapped forward or
        # returned from it as is.
        embs = [self.image(x) if v.startswith("image") else self.text(x) for v, x in zip(VIEWS, xs)]
        return embs, self.temperature.clone()


def batches():
    """The same global data for every run: STEPS x views x [GLOBAL_BATCH, IN_DIM]."""
    rng = np.random.default_rng(1234)
    return rng.standard_normal((STEPS, len(VIEWS), GLOBAL_BATCH, IN_DIM))


def run_case(negatives, queue, masked=False):
    """One case in float64 (towers, loss, queue), so that 2 ranks and 1 process agree far beyond the rounding
    of any CPU's summation order (see test_two_ranks_match_one_process)."""
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        return _run_case(negatives, queue, masked)
    finally:
        paddle.set_default_dtype(previous)


def _run_case(negatives, queue, masked):
    world, rank = edist.get_world_size(), edist.get_rank()
    b = GLOBAL_BATCH // world
    towers = Towers(np.random.default_rng(99))
    model = paddle.DataParallel(towers) if edist.is_distributed() else towers
    cfg = {"weights": {"image_image": 0.5, "text_text": 0.7, "image_caption": 1.0, "image_tags": 0.3},
           "negatives": negatives, "queue": {"enabled": queue, "size": 16, "momentum": 0.5},
           "mask_duplicates": "both" if masked else "none"}
    loss_fn = MultiViewContrastiveLoss(cfg, embed_dim=EMBED_DIM, global_batch=GLOBAL_BATCH)
    momentum = make_momentum_copy(towers) if queue else None
    opt = paddle.optimizer.SGD(learning_rate=0.5, parameters=towers.parameters())
    rec = {k: [] for k in ["loss_all_ranks", "temperature_grad", "image_weight_grad", "text_weight_grad",
                           "text_bias_grad", "emb_grads"]}
    for step, xs_np in enumerate(batches()):
        xs = [paddle.to_tensor(x[rank * b:(rank + 1) * b]) for x in xs_np]
        ids = None
        if masked:
            ids = {k: paddle.to_tensor(v[rank * b:(rank + 1) * b]) for k, v in identities(step).items()}
        embs, temperature = model(xs)
        grads = {}
        for v, e in zip(VIEWS, embs):
            e.register_hook(lambda g, v=v: grads.__setitem__(v, g))
        out = loss_fn(*embs, temperature=temperature, identities=ids)
        out["loss"].backward()
        values = paddle.to_tensor([float(out["loss"])] + [float(out[t]) for t in TERMS], dtype="float64")
        rec["loss_all_ranks"].append(edist.all_gather_no_grad(values.unsqueeze(0)).numpy())
        rec["temperature_grad"].append(towers.temperature.grad.numpy().copy())
        rec["image_weight_grad"].append(towers.image.weight.grad.numpy().copy())
        rec["text_weight_grad"].append(towers.text.weight.grad.numpy().copy())
        rec["text_bias_grad"].append(towers.text.bias.grad.numpy().copy())
        # Gradient reaching this rank's rows is W x the single-process one (ernievil2.train.distributed).
        rec["emb_grads"].append(np.stack([edist.all_gather_no_grad(grads[v]).numpy() / world for v in VIEWS]))
        opt.step()
        opt.clear_grad()
        clamp_logit_scale_(towers.temperature)
        if queue:
            momentum_update_(towers, momentum, loss_fn.config.queue.momentum)
            with paddle.no_grad():
                keys, _ = momentum(xs)
            loss_fn.update_queue(keys[VIEWS.index("image_view2")], keys[VIEWS.index("text_view1")], ids)
    result = {k: np.stack(v) for k, v in rec.items()}
    for name, p in towers.named_parameters():
        result["final_" + name] = p.numpy()
    if queue:
        for name, p in momentum.named_parameters():
            result["momentum_" + name] = p.numpy()
        for name, buf in loss_fn.queue.state_dict().items():
            result["queue_" + name] = buf.numpy()
    return result


def check_helpers():
    """broadcast_layer_, broadcast_ and all_reduce_mean_no_grad on rank-dependent values (all ranks' views)."""
    rank = edist.get_rank()
    layer = paddle.nn.Linear(2, 3)
    layer.register_buffer("buf", paddle.full([2], float(rank + 7)), persistable=True)
    for p in layer.parameters():
        p.set_value(paddle.full(p.shape, float(rank + 1)))
    edist.broadcast_layer_(layer, src=1)
    x = paddle.full([3], float(rank * 10))
    edist.broadcast_(x, src=0)
    mean = edist.all_reduce_mean_no_grad(paddle.full([2], float(rank + 1)))
    row = paddle.concat([layer.weight.flatten(), layer.bias, layer.buf, x, mean,
                         paddle.to_tensor([float(rank), float(edist.get_world_size())])])
    return {"rows": edist.all_gather_no_grad(row.unsqueeze(0)).numpy()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="directory for <case>.npz (written by rank 0)")
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args()
    paddle.distributed.init_parallel_env()
    if edist.get_world_size() != 2:
        raise SystemExit(f"expected 2 ranks, got {edist.get_world_size()}")
    for case in args.cases.split(","):
        res = run_case(**CASES[case])
        if edist.get_rank() == 0:
            os.makedirs(args.out, exist_ok=True)
            np.savez(os.path.join(args.out, case + ".npz"), **res)
    res = check_helpers()
    if edist.get_rank() == 0:
        np.savez(os.path.join(args.out, "helpers.npz"), **res)


if __name__ == "__main__":
    main()
