"""Benchmark: one training step's model work on one CPU thread, for the model of a training config.

    python benchmarks/bench_train_step.py packages/configs/demo.yaml [-o model.vision.heads=1 ...] [--steps 15]
        [--eager]

Builds the config's model (`model:` section, with any `-o` overrides), then times, per step, what a rank computes
for `data.batch_size` pairs: the trainer's tower module (train.trainer.MultiViewEncoder: two image views, the
caption twice and the tags, texts of `data.max_text_len` tokens), as a static program when the config says
`to_static` (unless --eager), a stand-in contrastive loss on the embeddings, the backward pass and an AdamW update. The
data loader, the real loss's all-gather and logging are left out: this is the part that the model's shape
decides (heads, patch size, widths), for comparing shapes before a training run. Milliseconds of this process's
CPU time per step (after 3 warm-up steps), with OMP/MKL at one thread as the demo's CPU ranks run.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("-o", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--eager", action="store_true", help="op by op even if the config says to_static")
    args = parser.parse_args()

    import paddle

    from ernievil2.config import parse_override
    from ernievil2.model.dual_encoder import build_model
    from ernievil2.train.config import load_train_config
    from ernievil2.train.trainer import MultiViewEncoder, static_towers

    cfg = load_train_config(args.config, [parse_override(o) for o in args.o])
    paddle.set_device("cpu")
    paddle.seed(0)
    model = build_model(cfg.model.vision, cfg.model.text, dropout=cfg.model.dropout)
    optimizer = paddle.optimizer.AdamW(parameters=model.parameters())
    size, batch = cfg.data.image_size, cfg.data.batch_size
    vocab = model.config.text.vocab_size
    views = [paddle.randn([batch, 3, size, size]) for _ in range(2)]
    texts = [paddle.randint(1, vocab, [batch, cfg.data.max_text_len]) for _ in range(2)]
    towers = MultiViewEncoder(model, ("image_view1", "image_view2", "text_view1", "text_view2", "tags"))
    static = cfg.to_static and not args.eager
    if static:
        towers = static_towers(towers, size, "cpu")
    pairs = (("image_view1", "text_view1"), ("image_view1", "tags"), ("image_view1", "image_view2"),
             ("text_view1", "text_view2"))

    def step():
        out = towers(*views, *texts)
        loss = sum(paddle.nn.functional.log_softmax(out[a] @ out[b].T, -1).mean() for a, b in pairs)
        (-loss).backward()
        optimizer.step()
        optimizer.clear_grad()

    for _ in range(3):
        step()
    start = time.process_time()
    for _ in range(args.steps):
        step()
    ms = (time.process_time() - start) / args.steps * 1000
    print(f"CPU: {platform.processor() or platform.machine()}; overrides: {' '.join(args.o) or 'none'}; "
          f"{'static program' if static else 'eager'}")
    print(f"model step ({batch} pairs, 2 image views, 3 texts of {cfg.data.max_text_len} tokens): {ms:.1f} ms, "
          f"{batch / ms * 1000:.1f} pairs/s on one thread")


if __name__ == "__main__":
    main()
