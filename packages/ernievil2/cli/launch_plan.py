"""`python -m ernievil2 launch-plan [--infer] CONFIG`: how run_train.sh (or run_infer.sh) starts a config, one word
per line."""
import os

from ..runtime import gpu_count, launch_plan
from .common import config_parser, guarded, parse_with_overrides


def main(argv=None):
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
