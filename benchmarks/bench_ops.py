"""Benchmark: equivalent ways to write the demo model's non-matmul pieces, forward + backward, one CPU thread.

    python benchmarks/bench_ops.py [--reps 30]

For each piece of the vision tower that a step profile shows outside the matrix products, the way the model code
writes it against equivalent formulations (same values): splitting the fused q/k/v projection, QuickGELU, and the
patch embedding (a strided convolution against a reshape and one matrix product).  Tensor sizes are the demo's
(48 images of 96x96 per rank, 65 tokens, width 64, 2 heads).  Each variant's output goes through the same
squared-sum loss and backward pass; milliseconds of wall time per repetition after 3 warm-ups.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

BATCH, TOKENS, WIDTH, HEADS, PATCH, GRID = 48, 65, 64, 2, 12, 8


def timed(fn, shape, reps):
    import paddle
    x = paddle.randn(shape)
    x.stop_gradient = False

    def once():
        out = fn(x)
        sum((o * o).sum() for o in (out if isinstance(out, (list, tuple)) else [out])).backward()

    for _ in range(3):
        once()
    start = time.perf_counter()
    for _ in range(reps):
        once()
    return (time.perf_counter() - start) / reps * 1000


def variants():
    import paddle
    import paddle.nn.functional as F

    head = WIDTH // HEADS
    weight = paddle.randn([WIDTH, 3, PATCH, PATCH])
    weight.stop_gradient = False

    def patches_matmul(x):
        patches = x.reshape([BATCH, 3, GRID, PATCH, GRID, PATCH]).transpose([0, 2, 4, 1, 3, 5])
        return paddle.matmul(patches.reshape([BATCH, GRID * GRID, 3 * PATCH * PATCH]),
                             weight.reshape([WIDTH, 3 * PATCH * PATCH]), transpose_y=True)

    qkv = [BATCH, TOKENS, 3 * WIDTH]
    hidden = [BATCH, TOKENS, 4 * WIDTH]
    pixels = [BATCH, 3, GRID * PATCH, GRID * PATCH]
    return [
        ("q/k/v: split [B,N,3H,d] on axis 2 (model)", qkv,
         lambda x: paddle.split(x.reshape([BATCH, TOKENS, 3 * HEADS, head]), 3, axis=2)),
        ("q/k/v: split on the last axis", qkv,
         lambda x: [t.reshape([BATCH, TOKENS, HEADS, head]) for t in paddle.split(x, 3, axis=-1)]),
        ("q/k/v: unbind [B,N,3,H,d]", qkv,
         lambda x: paddle.unbind(x.reshape([BATCH, TOKENS, 3, HEADS, head]), axis=2)),
        ("q/k/v: three slices", qkv,
         lambda x: [x[:, :, i * WIDTH:(i + 1) * WIDTH].reshape([BATCH, TOKENS, HEADS, head]) for i in range(3)]),
        ("QuickGELU: x * sigmoid(1.702 x) (model)", hidden, lambda x: x * F.sigmoid(1.702 * x)),
        ("QuickGELU: silu(1.702 x) / 1.702", hidden, lambda x: F.silu(1.702 * x) * (1 / 1.702)),
        ("patch embedding: conv2d (model)", pixels, lambda x: F.conv2d(x, weight, stride=PATCH)),
        ("patch embedding: reshape + matmul", pixels, patches_matmul),
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    import paddle
    paddle.set_device("cpu")
    paddle.seed(0)
    print(f"CPU: {platform.processor() or platform.machine()}; forward + backward, ms per repetition")
    for name, shape, fn in variants():
        print(f"{name:45s} {timed(fn, shape, args.reps):8.2f}")


if __name__ == "__main__":
    main()
