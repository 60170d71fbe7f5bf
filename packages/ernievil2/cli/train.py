"""`python -m ernievil2 train CONFIG` (run_train.sh) and `launch-plan CONFIG` (how run_train.sh starts it)."""
import os

from ..runtime import gpu_count, launch_plan
from . import eval as eval_cli
from . import gallery as gallery_cli
from . import infer as infer_cli
from . import search as search_cli
from .common import config_parser, guarded, parse_with_overrides


def train_main(argv=None):
    parser = config_parser("run_train.sh", "Multi-view contrastive training.",
                           "training YAML, e.g. packages/configs/demo.yaml")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        from ..train.config import load_train_config
        from ..train.trainer import run_training
        cfg = load_train_config(args.config, overrides)
        trainer, _ = run_training(cfg)
        if trainer.is_main and cfg.data.test_file:
            return embed_and_evaluate_test(trainer)
        return 0

    return guarded(run, bad_row_hint="(set data.on_bad_row: skip to skip such rows)")


def launch_plan_main(argv=None):
    """For run_train.sh and run_infer.sh (--infer): how to start a config (train.config.launch_plan), one word
    per line."""
    parser = config_parser("launch-plan", "Print the launch plan.", "training YAML (or inference YAML with --infer)")
    parser.add_argument("--infer", action="store_true", help="CONFIG is an inference config (run_infer.sh)")
    args, overrides = parse_with_overrides(parser, argv)

    def run():
        if args.infer:
            from ..infer.options import load_infer_config
            cfg = load_infer_config(args.config, overrides)
            log_dir = os.path.join(os.path.dirname(os.path.abspath(cfg.output_file)), "launch_log")
            plan = launch_plan(cfg.cpu_processes, log_dir, gpu_count() if cfg.device == "gpu" else 0, per_gpu=False)
        else:
            from ..train.config import launch_plan as train_launch_plan
            from ..train.config import load_train_config
            plan = train_launch_plan(load_train_config(args.config, overrides), gpu_count())
        print("\n".join(plan))

    return guarded(run)


def embed_and_evaluate_test(trainer):
    """After training: embed the test split with the final weights through the same entry points as
    run_infer.sh and eval_retri.py, and print the recall table."""
    infer_yaml = os.path.join(trainer.out_dir, "infer.yaml")
    device = "gpu" if trainer.device == "gpu" else "cpu"
    print(f"embedding the test split: bash run_infer.sh {device} {infer_yaml}", flush=True)
    code = infer_cli.main([infer_yaml, "-o", f"device={device}", "-o", "progress=false"])
    if code:
        return code
    embeddings = os.path.join(trainer.out_dir, "test_embeddings.out")
    folds = ["--folds", str(trainer.cfg.data.test_folds)] if trainer.cfg.data.test_folds > 1 else []
    print(f"python eval_retri.py {' '.join([embeddings, *folds])}", flush=True)
    code = eval_cli.main([embeddings, *folds])
    zeroshot = trainer.cfg.zeroshot
    if not code and zeroshot.images and zeroshot.labels:
        predictions = os.path.join(trainer.out_dir, "zeroshot_predictions.jsonl")
        args = [infer_yaml, "-o", f"device={device}", "-o", "progress=false", "-o", f"images={zeroshot.images}",
                "-o", f"labels={zeroshot.labels}", "-o", f"output_file={predictions}"]
        if zeroshot.templates:
            args += ["-o", f"templates={zeroshot.templates}"]
        print(f"python -m ernievil2 zeroshot {' '.join(args)}", flush=True)
        code = gallery_cli.zeroshot_main(args)
    if not code and trainer.cfg.search.queries:
        code = _search_test_images(trainer, infer_yaml, device)
    return code


def _search_test_images(trainer, infer_yaml, device):
    """An index over the test images (from run_infer's sidecar), then the top 3 for each configured query."""
    index_dir = os.path.join(trainer.out_dir, "search_index")
    sidecar = os.path.join(trainer.out_dir, "test_embeddings.npz")
    args = ["build", sidecar, index_dir, "--gallery", trainer.cfg.data.test_file]
    print(f"python -m ernievil2 index {' '.join(args)}", flush=True)
    code = search_cli.index_main(args)
    for query in trainer.cfg.search.queries:
        if code:
            break
        print(f"python -m ernievil2 search {infer_yaml} {index_dir} --text {query} -k 3", flush=True)
        code = search_cli.search_main([infer_yaml, index_dir, "--text", str(query), "-k", "3",
                                       "-o", f"device={device}"])
    return code
