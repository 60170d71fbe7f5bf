"""Collectives for contrastive training: a differentiable all-gather and no-grad helpers.  Everything degrades to
the identity / a no-op in one process, so the same loss code runs in unit tests."""
from typing import List

import paddle
import paddle.distributed as dist
from paddle.autograd import PyLayer


def is_distributed() -> bool:
    """True when collectives can be issued: the parallel env is initialised and W > 1."""
    return dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _gather_list(x: paddle.Tensor) -> List[paddle.Tensor]:
    parts: List[paddle.Tensor] = []
    # Collectives need contiguous memory; a slice such as the class token h[:, 0] is a strided view.
    dist.all_gather(parts, x.contiguous())
    return parts


class _AllGatherWithGrad(PyLayer):
    """all_gather along dim 0 whose backward sums the gradients of all ranks and returns own rows."""

    @staticmethod
    def forward(ctx, x):
        ctx.rows = x.shape[0]
        ctx.rank = dist.get_rank()
        return paddle.concat(_gather_list(x), axis=0)

    @staticmethod
    def backward(ctx, grad):
        # Clone: all_reduce works in place and the incoming gradient buffer belongs to autograd.
        total = grad.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        start = ctx.rank * ctx.rows
        return total[start:start + ctx.rows]


def all_gather_with_grad(x: paddle.Tensor) -> paddle.Tensor:
    """Concatenate ``x`` ([B, ...]) of all ranks along dim 0 with gradients routed back to the owner.
    Identity when not distributed.

    Gradient convention (read this before touching the loss scaling).
    Let W be the world size, B the per-rank batch, N = W * B the global batch, and ``L`` the loss a single
    process would compute on the whole global batch (a mean over the N rows).

    * forward: every rank receives the concatenation of all ranks' ``[B, D]`` tensors, ``[N, D]``, in
      rank order (rank r owns rows ``r*B : (r+1)*B``).
    * backward: the incoming ``[N, D]`` gradients of all ranks are **summed** (all_reduce) and each rank
      keeps its own ``B`` rows.  Nothing is divided by W.

    With the two loss modes of `train.losses`:

    * ``full``:  every rank computes ``L`` itself (global logits).  Each rank's gradient w.r.t. the
      gathered tensor is ``dL/dG``; summed over W ranks and sliced it becomes ``W * dL/dx_own``.
    * ``local``: rank r computes ``L_r`` = the mean over its own B query rows against all N columns, so
      ``L = mean_r L_r``.  Summing ``dL_r/dG`` over ranks gives ``d(sum_r L_r)/dx_own = W * dL/dx_own``.

    So in both modes the gradient reaching rank r's embeddings is **W times** the single-process gradient
    of those rows, and the parameter gradients of the towers behind them are W times rank r's share.
    ``paddle.DataParallel`` then all-reduce-**averages** parameter gradients (divides the sum by W), which
    yields exactly the single-process gradient ``sum_r share_r = dL/dparams``.  A parameter used directly
    by the loss (the temperature) gets ``dL/dt`` on every rank in ``full`` mode and ``dL_r/dt`` in
    ``local`` mode; averaged over ranks both equal ``dL/dt``.  Hence: 2 ranks x B == 1 rank x 2B, provided
    the trainer averages (not sums) gradients across ranks, which is what DataParallel does.

    Every rank must contribute the same number of rows (``all_gather`` needs equal shapes): use
    ``drop_last`` in the distributed sampler.

    Gloo (the CPU backend) has no ``reduce_scatter``, so the backward uses all_reduce + slice, which moves
    W times more data than a reduce_scatter would; the tensors are ``[N, D]`` embeddings, so this is cheap.
    """
    if not is_distributed():
        return x
    if x.stop_gradient:
        return all_gather_no_grad(x)
    return _AllGatherWithGrad.apply(x)


@paddle.no_grad()
def all_gather_no_grad(x: paddle.Tensor) -> paddle.Tensor:
    """Concatenate ``x`` of all ranks along dim 0, outside autograd (momentum keys, logging)."""
    if not is_distributed():
        return x
    return paddle.concat(_gather_list(x.detach()), axis=0)


@paddle.no_grad()
def all_reduce_mean_no_grad(x: paddle.Tensor) -> paddle.Tensor:
    """Mean of ``x`` over ranks, outside autograd (a copy; ``x`` is not modified)."""
    if not is_distributed():
        return x.detach()
    y = x.detach().clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y / float(dist.get_world_size())


@paddle.no_grad()
def broadcast_(x: paddle.Tensor, src: int = 0) -> paddle.Tensor:
    """Overwrite ``x`` in place with rank ``src``'s value (returns ``x``)."""
    if is_distributed():
        dist.broadcast(x, src=src)
    return x


@paddle.no_grad()
def broadcast_layer_(layer: paddle.nn.Layer, src: int = 0) -> paddle.nn.Layer:
    """Make every parameter and buffer of ``layer`` equal to rank ``src``'s copy, in place.

    Used e.g. for momentum encoders and loss queues, which are not wrapped in DataParallel (which
    only syncs its own parameters at construction).
    """
    if is_distributed():
        for t in list(layer.parameters()) + list(layer.buffers()):
            dist.broadcast(t, src=src)
    return layer


def get_world_size_from_env() -> int:
    """Ranks the launcher started (PADDLE_TRAINERS_NUM), readable before the parallel env is initialised."""
    import os
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


_barriers_passed = 0


def barrier(timeout_s: float = None) -> None:
    """Wait until every rank gets here, for as long as one rank's solo work takes (rank 0 writing a checkpoint,
    evaluating, generating data).  Counted in the launcher's TCP store rather than by a collective: gloo's
    collectives on the CPU give up after 30 s, too short for such work on a busy machine.  Every rank passes
    the barriers in the same order, so the n-th barrier of each rank meets at one key.  The timeout defaults to
    the process-group timeout (PADDLE_PG_TIMEOUT, milliseconds; 30 minutes)."""
    global _barriers_passed
    if not is_distributed():
        return
    import os
    import time

    from paddle.base import core
    if timeout_s is None:
        timeout_s = int(os.environ.get("PADDLE_PG_TIMEOUT", "1800000")) / 1000.0
    _barriers_passed += 1
    store = core.create_or_get_global_tcp_store()
    key = f"ernievil2/barrier/{_barriers_passed}"
    world = get_world_size()
    arrived = store.add(key, 1)
    deadline = time.monotonic() + timeout_s
    delay = 0.001
    while arrived < world:
        if time.monotonic() > deadline:
            raise RuntimeError(f"barrier {_barriers_passed}: {arrived} of {world} ranks arrived in {timeout_s:.0f} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
        arrived = store.add(key, 0)
