"""The training config: its schema (every key, default and check), loading with `-o key=value` overrides, and
how run_train.sh starts a run (`launch_plan`).  No Paddle here, so a bad config is reported before Paddle loads."""
import os

from ..config import REQUIRED, Field, Section, load_config
from ..data.images import DEFAULT_MAX_PIXELS
from ..errors import ConfigError
from ..model.configs import INIT_SCHEMES, TEXT_SCHEMA, VISION_KEYS, check_text_length, vision_config
from ..runtime import launch_plan as runtime_launch_plan
from ..runtime import launched_world_size
from .loss_config import LOSS_SCHEMA


def _augment_keys():
    """The options of data.transforms.augment_train a YAML may set under data.augment."""
    import inspect

    from ..data.transforms import augment_train
    return sorted(set(inspect.signature(augment_train).parameters) - {"rgb", "rng", "size"})


def _check_training(cfg):
    """What needs several keys, or more than one key's value, to be known."""
    if isinstance(cfg.data.augment, dict):
        for key in cfg.data.augment:
            if key not in _augment_keys():
                raise ConfigError(f"is not an augmentation option; expected some of {', '.join(_augment_keys())}",
                                  where=f"data.augment.{key}")
    if cfg.dtype == "float64" and cfg.amp.mode != "off":
        raise ConfigError(f"must be off with dtype float64, got {cfg.amp.mode}", where="amp.mode")
    if cfg.resume not in (None, "auto") and not os.path.isdir(cfg.resume):
        raise ConfigError(f"must be auto or a checkpoint directory; {cfg.resume} does not exist", where="resume")
    # Under paddle.distributed.launch the world size is known here, before Paddle loads; the global batch is
    # the per-rank batch times the ranks, and the queue takes whole global batches.
    world = launched_world_size()
    if cfg.loss.queue.enabled and cfg.loss.queue.size % (cfg.data.batch_size * world):
        raise ConfigError(f"({cfg.loss.queue.size}) must be a multiple of the global batch size "
                          f"({cfg.data.batch_size * world} = data.batch_size {cfg.data.batch_size} x {world} ranks)",
                          where="loss.queue.size")
    if cfg.to_static and cfg.model.recompute:
        # inside a static program Paddle's recompute only tags ops for a pass that plain to_static does not run
        raise ConfigError("does not recompute inside to_static's program (no memory would be saved); turn off "
                          "one of to_static and model.recompute", where="model.recompute")
    vision_config(cfg.model.vision)
    check_text_length(cfg.model.text, cfg.data.max_text_len, "data.max_text_len")


NOT_OUTPUT = {"affects_output": False}
TRAIN_SCHEMA = Section({
    "output_dir": Field("./output", **NOT_OUTPUT, doc="checkpoints, logs, final weights and test results"),
    "seed": Field(42, doc="seeds the initialisation, data order and augmentation"),
    "resume": Field(None, type=str, **NOT_OUTPUT,
                    doc="auto: the newest checkpoint in output_dir; or a checkpoint directory"),
    "vocab_file": Field(REQUIRED, type=str, doc="token \\t id lines"),
    "device": Field("auto", choices=("auto", "gpu", "cpu")),
    "cpu_threads": Field(0, minimum=0, doc="math threads per rank on the CPU; 0: the cores divided among local "
                                           "ranks"),
    "cpu_processes": Field(1, minimum=1, doc="CPU only, when run_train.sh gets no launcher options: "
                                             "data-parallel processes on this machine (small models train faster "
                                             "as several single-threaded ranks)"),
    "to_static": Field(False, doc="run the towers as one static program (paddle.jit.to_static): the same "
                                  "training, ~1.2-1.4x faster for a small model on CPU ranks (docs/training.md); "
                                  "not with model.recompute"),
    "dtype": Field("float32", choices=("float32", "float64"),
                   doc="float64: weights, activations, losses and optimizer state in double precision (no AMP); "
                       "slower, for exactness checks whose result must not depend on the CPU's summation order"),
    "data": Section({
        "train_file": Field(REQUIRED, type=(str, list), doc="TSV file(s), a directory of shards or a glob"),
        "dev_file": Field(None, type=str, doc="recall measured every schedule.eval_every steps"),
        "test_file": Field(None, type=str, doc="embedded and evaluated after training"),
        "test_folds": Field(1, minimum=1, doc="the test table averages over this many equal parts of the test "
                                              "images, each ranked on its own (COCO's 1K protocol: 5 folds)"),
        "generate_demo_data": Field(False, doc="generate the demo data set into train_file's folder if missing"),
        "demo_data": Field({}, type=dict, doc="parameters of the demo data generator"),
        "batch_size": Field(32, minimum=1, doc="rows per rank per step"),
        "num_workers": Field(2, minimum=0, **NOT_OUTPUT, doc="data-loader processes per rank"),
        "image_size": Field(224, minimum=1, doc="square training input side"),
        "max_text_len": Field(48, minimum=3, doc="tokens per text, [CLS] and [SEP] included"),
        "augment": Field(True, type=(bool, dict), doc="true, false, or augment_train options"),
        "colour_work": Field("auto", choices=("auto", "loader", "device"),
                             doc="where augmented views get their per-pixel colour work (jitter, grayscale, blur, "
                                 "normalisation): in the loader, or batched on the training device from the "
                                 "loader's uint8 crops and draws (about half a sample's CPU time); auto: device "
                                 "when training on a GPU"),
        "shuffle": True,
        "shuffle_window": Field(8, minimum=1, doc="shards whose rows are shuffled together (the shard order is "
                                                  "shuffled too)"),
        "tags_file": Field(None, type=str, doc="image_id \\t tags lines for the image_tags term"),
        "shuffle_tags": True,
        "max_tags": Field(0, minimum=0, doc="tags kept per image; 0: all"),
        "on_bad_row": Field("error", choices=("error", "skip")),
        "max_image_pixels": Field(DEFAULT_MAX_PIXELS, minimum=1),
        "eval_batch_size": Field(32, minimum=1, doc="rows per batch when embedding dev and test splits"),
    }),
    "model": Section({
        "vision": Field("vit_b16", type=(str, dict), doc="a preset (vit_b16, vit_l14) or vision tower keys",
                        keys=VISION_KEYS, string_key="preset"),
        "text": Field("./packages/ernie_base_3.0/ernie_config.base.json", type=(str, dict), keys=TEXT_SCHEMA,
                      doc="an ernie_config JSON file or text tower keys"),
        "init_from_params": Field(None, type=str, doc="starting weights (official or PaddleNLP layout)"),
        "strict_load": Field(True, doc="every weight must be in the file"),
        "dropout": Field(None, type=float, minimum=0.0, below=1.0, doc="overrides every dropout of both towers"),
        "init_scheme": Field("normal", choices=INIT_SCHEMES,
                             doc="from-scratch weights of linear layers: normal: N(0, 0.02^2) as BERT/ERNIE; "
                                 "fan_in: N(0, 1/fan_in), for narrow towers (e.g. the demo's), which otherwise "
                                 "start near chance for many steps"),
        "init_logit_scale": Field(None, type=float, minimum=1.0,
                                  doc="starting exp(t) when not loading weights (default 1/0.07)"),
        "recompute": Field(False, doc="recompute activations in the backward pass (less memory)"),
        "freeze": Section({"visual": False, "text": False,
                           "visual_layers": Field(0, minimum=0, doc="lowest image blocks frozen"),
                           "text_layers": Field(0, minimum=0, doc="lowest text blocks frozen")}),
    }),
    "optimizer": Section({
        "lr": Field(5e-5, minimum=0.0),
        "weight_decay": Field(0.05, minimum=0.0),
        "beta1": Field(0.9, minimum=0.0, below=1.0),
        "beta2": Field(0.98, minimum=0.0, below=1.0),
        "epsilon": Field(1e-6, minimum=0.0),
        "grad_clip": Field(1.0, minimum=0.0, doc="global gradient norm clip; 0: none"),
        "accumulate_steps": Field(1, minimum=1, doc="batches per optimizer step"),
    }),
    "schedule": Section({
        "max_steps": Field(1000, minimum=0),
        "epochs": Field(None, type=float, minimum=0.0, doc="if set, max_steps = epochs x steps per epoch"),
        "warmup_steps": Field(100, minimum=0),
        "min_lr_ratio": Field(0.0, minimum=0.0, maximum=1.0, doc="final lr / lr of the cosine decay"),
        "log_every": Field(10, minimum=1, **NOT_OUTPUT),
        "eval_every": Field(0, minimum=0, **NOT_OUTPUT, doc="steps between dev evaluations; 0: none"),
        "save_every": Field(500, minimum=0, **NOT_OUTPUT, doc="steps between checkpoints; 0: only the last"),
        "keep_last": Field(3, minimum=0, **NOT_OUTPUT, doc="newest checkpoints kept; 0 keeps every one"),
        "max_bad_steps": Field(5, minimum=0, doc="consecutive non-finite losses before the run stops"),
    }),
    "amp": Section({
        "mode": Field("off", choices=("off", "fp16", "bf16")),
        "level": Field("O1", choices=("O1", "O2")),
        "init_loss_scaling": Field(32768.0, minimum=1.0),
    }),
    "loss": LOSS_SCHEMA,
    "log": Section({"visualdl": Field(True, **NOT_OUTPUT, doc="VisualDL logs in output_dir (when installed)"),
                    "progress": Field(True, **NOT_OUTPUT, doc="progress line on stderr")}),
    "zeroshot": Section({
        "images": Field(None, type=str, **NOT_OUTPUT, doc="label \\t image_id \\t base64 rows (for accuracy)"),
        "labels": Field(None, type=str, **NOT_OUTPUT, doc="one class name per line"),
        "templates": Field(None, type=str, **NOT_OUTPUT, doc="prompts with {}; null: the built-in Chinese ones"),
    }, doc="after training (with a test_file): zero-shot classification of `images` into `labels`"),
    "search": Section({
        "queries": Field([], type=list, **NOT_OUTPUT, doc="texts searched for in the index"),
        "top_k": Field(3, minimum=1, **NOT_OUTPUT, doc="hits listed per query (at most the test images)"),
    }, doc="after training (with a test_file): a search index over the test images (output_dir/search_index)"),
}, check=_check_training, doc="run_train.sh: the run, data, model, optimiser, schedule, mixed precision, loss "
                               "and the steps after training")


def load_train_config(path, overrides=()):
    return load_config(TRAIN_SCHEMA, path, overrides)


def launch_plan(cfg, gpu_count):
    """How run_train.sh starts training when it gets no launcher options (runtime.launch_plan): one rank per
    visible GPU, or cfg.cpu_processes CPU ranks; the launcher's per-rank logs go to output_dir/launch_log."""
    return runtime_launch_plan(cfg.cpu_processes, os.path.join(cfg.output_dir, "launch_log"),
                               gpu_count if cfg.device != "cpu" else 0)
