"""`python -m ernievil2 train CONFIG [-o key=value ...]` (run_train.sh): train, then, with a test split, the
steps of workflow.after_training (embed and evaluate it, zero-shot, search), whose results are printed here."""
from ..eval.metrics import format_table
from .common import config_parser, format_hits, guarded, parse_with_overrides


def main(argv=None):
    parser = config_parser("run_train.sh", "Multi-view contrastive training.",
                           "training YAML, e.g. packages/configs/demo.yaml")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..train.config import load_train_config
        from ..train.trainer import run_training
        cfg = load_train_config(args.config, overrides)
        trainer, _ = run_training(cfg)
        if trainer.is_main and cfg.data.test_file:
            from ..workflow.after_training import after_training
            print_results(after_training(trainer.out_dir, cfg, "gpu" if trainer.device == "gpu" else "cpu"))

    return guarded(run, bad_row_hint="(set data.on_bad_row: skip to skip such rows)")


def print_results(result):
    """The after-training results as the separate commands print them (run_infer.sh, eval_retri.py,
    zeroshot, index build, search)."""
    for line in result.embedding.lines():
        print(line)
    print(format_table(result.metrics))
    if result.zeroshot is not None:
        for line in result.zeroshot.lines():
            print(line)
    if result.index_dir:
        print(f"search index over the test images: {result.index_dir}")
    for query, hits in result.searches:
        print(f"search: {query}")
        for line in format_hits(hits):
            print(line)
    for note in result.notes:
        print(f"note: {note}")
    return 0
