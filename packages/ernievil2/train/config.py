"""The training config: its schema (every key, default and check), loading with `-o key=value` overrides, and
how run_train.sh starts a run (`launch_plan`).  No Paddle here, so a bad config is reported before Paddle loads."""
import os

from ..config import REQUIRED, Field, load_config
from ..data.images import DEFAULT_MAX_PIXELS
from ..errors import ConfigError
from ..runtime import launch_plan as runtime_launch_plan
from .loss_config import LossConfig

TRAIN_SCHEMA = {
    "output_dir": "./output",
    "seed": 42,
    "resume": Field(None, type=str, doc="auto: the newest checkpoint in output_dir; or a checkpoint directory"),
    "vocab_file": Field(REQUIRED, type=str),
    "device": Field("auto", choices=("auto", "gpu", "cpu")),
    "cpu_threads": Field(0, doc="math threads per rank on the CPU; 0: the cores divided among local ranks"),
    "cpu_processes": Field(1, doc="CPU only, when run_train.sh gets no launcher options: data-parallel processes "
                                  "on this machine (small models train faster as several single-threaded ranks)"),
    "dtype": Field("float32", choices=("float32", "float64"),
                   doc="float64: weights, activations, losses and optimizer state in double precision (no AMP); "
                       "slower, for exactness checks whose result must not depend on the CPU's summation order"),
    "data": {
        "train_file": Field(REQUIRED, type=(str, list)),
        "dev_file": Field(None, type=str),
        "test_file": Field(None, type=str),
        "test_folds": Field(1, type=int, doc="the test table averages over this many equal parts of the test images, "
                                             "each ranked on its own (COCO's 1K protocol: 5 folds)"),
        "generate_demo_data": False,
        "demo_data": Field({}, type=dict),
        "batch_size": 32,
        "num_workers": 2,
        "image_size": 224,
        "max_text_len": 48,
        "augment": Field(True, type=(bool, dict), doc="true, false, or augment_train options"),
        "shuffle": True,
        "shuffle_window": Field(8, doc="shards whose rows are shuffled together (the shard order is shuffled too)"),
        "tags_file": Field(None, type=str),
        "shuffle_tags": True,
        "max_tags": 0,
        "on_bad_row": Field("error", choices=("error", "skip")),
        "max_image_pixels": DEFAULT_MAX_PIXELS,
        "eval_batch_size": 32,
    },
    "model": {
        "vision": Field("vit_b16", type=(str, dict)),
        "text": Field("./packages/ernie_base_3.0/ernie_config.base.json", type=(str, dict)),
        "init_from_params": Field(None, type=str),
        "strict_load": True,
        "dropout": Field(None, type=float),
        "init_logit_scale": Field(None, type=float, doc="starting exp(t) when not loading weights (default 1/0.07)"),
        "recompute": False,
        "freeze": {"visual": False, "text": False, "visual_layers": 0, "text_layers": 0},
    },
    "optimizer": {
        "lr": 5e-5,
        "weight_decay": 0.05,
        "beta1": 0.9,
        "beta2": 0.98,
        "epsilon": 1e-6,
        "grad_clip": 1.0,
        "accumulate_steps": 1,
    },
    "schedule": {
        "max_steps": 1000,
        "epochs": Field(None, type=float, doc="if set, max_steps = epochs x steps per epoch"),
        "warmup_steps": 100,
        "min_lr_ratio": 0.0,
        "log_every": 10,
        "eval_every": 0,
        "save_every": 500,
        "keep_last": Field(3, doc="newest checkpoints kept; 0 keeps every one"),
        "max_bad_steps": 5,
    },
    "amp": {
        "mode": Field("off", choices=("off", "fp16", "bf16")),
        "level": Field("O1", choices=("O1", "O2")),
        "init_loss_scaling": 32768.0,
    },
    "loss": LossConfig().to_dict(),
    "log": {"visualdl": True, "progress": True},
    # After training (with a test_file): zero-shot classification of `images` (label \t image_id \t base64 for
    # accuracy) into `labels`, with `templates` (null: the built-in Chinese prompts).
    "zeroshot": {"images": Field(None, type=str), "labels": Field(None, type=str), "templates": Field(None, type=str)},
    # After training (with a test_file): a search index over the test images (output_dir/search_index) and the
    # top 3 images for each of these text queries.
    "search": {"queries": Field([], type=list)},
}


def load_train_config(path, overrides=()):
    cfg = load_config(TRAIN_SCHEMA, path, overrides)
    src = path or "<config>"
    try:
        LossConfig.from_dict(cfg.loss.to_dict())
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    for key in ("data.batch_size", "optimizer.accumulate_steps", "schedule.log_every", "data.image_size",
                "cpu_processes", "data.shuffle_window", "data.test_folds"):
        if cfg.get_path(key) < 1:
            raise ConfigError(f"{src}: '{key}' must be >= 1, got {cfg.get_path(key)}")
    for key in ("schedule.max_steps", "schedule.save_every", "schedule.eval_every", "schedule.warmup_steps"):
        if cfg.get_path(key) < 0:
            raise ConfigError(f"{src}: '{key}' must be >= 0, got {cfg.get_path(key)}")
    if isinstance(cfg.data.augment, dict):
        import inspect

        from ..data.transforms import augment_train
        allowed = set(inspect.signature(augment_train).parameters) - {"rgb", "rng", "size"}
        for key in cfg.data.augment:
            if key not in allowed:
                raise ConfigError(f"{src}: unknown key 'data.augment.{key}'; expected some of "
                                  f"{', '.join(sorted(allowed))}")
    if cfg.dtype == "float64" and cfg.amp.mode != "off":
        raise ConfigError(f"{src}: 'amp.mode' must be off with dtype float64, got {cfg.amp.mode}")
    if cfg.resume not in (None, "auto") and not os.path.isdir(cfg.resume):
        raise ConfigError(f"{src}: 'resume' must be auto or a checkpoint directory; {cfg.resume} does not exist")
    return cfg


def launch_plan(cfg, gpu_count):
    """How run_train.sh starts training when it gets no launcher options (runtime.launch_plan): one rank per
    visible GPU, or cfg.cpu_processes CPU ranks; the launcher's per-rank logs go to output_dir/launch_log."""
    return runtime_launch_plan(cfg.cpu_processes, os.path.join(cfg.output_dir, "launch_log"),
                               gpu_count if cfg.device != "cpu" else 0)
