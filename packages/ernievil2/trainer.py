"""The multi-view contrastive trainer: one process to many nodes through Paddle's collective (fleet) mode.

One optimizer step = `optimizer.accumulate_steps` global batches.  Each global batch is split across ranks;
the loss module gathers embeddings so every rank's loss sees the whole global batch.  Checkpoints hold
everything a run needs to continue exactly (weights, optimizer + LR schedule, loss scaler, momentum towers and
queue, step); data order, augmentation and dropout are functions of (seed, step/epoch, index), so a resumed
run ends with the same weights as an uninterrupted one.
"""
import json
import math
import os
import re
import shutil
import sys
import time

import numpy as np
import paddle
import paddle.nn as nn

from . import distributed as dist
from .checkpoint import load_weights, read_state, save_weights, state_arrays
from .config import REQUIRED, ConfigError, Field, load_config
from .fileio import atomic_write
from .image_ops import DEFAULT_MAX_PIXELS
from .losses import (LossConfig, MultiViewContrastiveLoss, clamp_logit_scale_, make_momentum_copy,
                     momentum_update_)
from .model import ErnieViL2, ModelConfig
from .tokenizer import ErnieTokenizer
from .train_data import GlobalBatchSampler, MultiViewDataset, TsvIndex, collate_samples, read_tags_file

TRAIN_SCHEMA = {
    "output_dir": "./output",
    "seed": 42,
    "resume": Field(None, type=str, doc="auto: the newest checkpoint in output_dir; or a checkpoint directory"),
    "vocab_file": Field(REQUIRED, type=str),
    "device": Field("auto", choices=("auto", "gpu", "cpu")),
    "cpu_threads": Field(0, doc="math threads per rank on the CPU; 0: the cores divided among local ranks"),
    "cpu_processes": Field(1, doc="CPU only, when run_train.sh gets no launcher options: data-parallel processes "
                                  "on this machine (small models train faster as several single-threaded ranks)"),
    "data": {
        "train_file": Field(REQUIRED, type=(str, list)),
        "dev_file": Field(None, type=str),
        "test_file": Field(None, type=str),
        "generate_demo_data": False,
        "demo_data": Field({}, type=dict),
        "batch_size": 32,
        "num_workers": 2,
        "image_size": 224,
        "max_text_len": 48,
        "augment": Field(True, type=(bool, dict), doc="true, false, or augment_train options"),
        "shuffle": True,
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
        "keep_last": 3,
        "max_bad_steps": 5,
    },
    "amp": {
        "mode": Field("off", choices=("off", "fp16", "bf16")),
        "level": Field("O1", choices=("O1", "O2")),
        "init_loss_scaling": 32768.0,
    },
    "loss": LossConfig().to_dict(),
    "log": {"visualdl": True, "progress": True},
}


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what is left on disk."""


def load_train_config(path, overrides=()):
    cfg = load_config(TRAIN_SCHEMA, path, overrides)
    src = path or "<config>"
    try:
        LossConfig.from_dict(cfg.loss.to_dict())
    except ValueError as e:
        raise ConfigError(f"{src}: {e}") from None
    for key in ("data.batch_size", "optimizer.accumulate_steps", "schedule.log_every", "data.image_size",
                "cpu_processes"):
        if cfg.get_path(key) < 1:
            raise ConfigError(f"{src}: '{key}' must be >= 1, got {cfg.get_path(key)}")
    for key in ("schedule.max_steps", "schedule.save_every", "schedule.eval_every", "schedule.warmup_steps"):
        if cfg.get_path(key) < 0:
            raise ConfigError(f"{src}: '{key}' must be >= 0, got {cfg.get_path(key)}")
    if isinstance(cfg.data.augment, dict):
        import inspect

        from .image_ops import augment_train
        allowed = set(inspect.signature(augment_train).parameters) - {"rgb", "rng", "size"}
        for key in cfg.data.augment:
            if key not in allowed:
                raise ConfigError(f"{src}: unknown key 'data.augment.{key}'; expected some of "
                                  f"{', '.join(sorted(allowed))}")
    if cfg.resume not in (None, "auto") and not os.path.isdir(cfg.resume):
        raise ConfigError(f"{src}: 'resume' must be auto or a checkpoint directory; {cfg.resume} does not exist")
    return cfg


# ------------------------------------------------------------------------------------------- model side

class MultiViewEncoder(nn.Layer):
    """Runs the towers on the views the active loss terms need.  Wrapped by DataParallel as a whole, and it
    returns the temperature through an op: DataParallel must see every trainable parameter used in forward."""

    def __init__(self, model, views):
        super().__init__()
        self.model = model
        self.views = views

    def forward(self, image_view1, image_view2, caption_ids, tag_ids):
        out = {}
        if "image_view1" in self.views:
            out["image_view1"] = self.model.encode_image(image_view1)
        if "image_view2" in self.views:
            out["image_view2"] = self.model.encode_image(image_view2)
        if "text_view1" in self.views:
            out["text_view1"] = self.model.encode_text(caption_ids)
        if "text_view2" in self.views:  # a second pass: dropout makes it a second view of the same text
            out["text_view2"] = self.model.encode_text(caption_ids)
        if "tags" in self.views:
            out["tags"] = self.model.encode_text(tag_ids)
        out["temperature"] = self.model.temperature.clone()
        return out


def needed_views(loss_cfg):
    views = set()
    w = loss_cfg.weights
    img_x, txt_x = f"image_view{loss_cfg.cross_modal_image_view}", f"text_view{loss_cfg.cross_modal_text_view}"
    if w.image_image:
        views |= {"image_view1", "image_view2"}
    if w.text_text:
        views |= {"text_view1", "text_view2"}
    if w.image_caption:
        views |= {img_x, txt_x}
    if w.image_tags:
        views |= {img_x, "tags"}
    return views


def freeze_layers(model, freeze):
    """Stop gradients for whole towers or their lowest N blocks (embeddings included)."""
    frozen = []
    for name, param in model.named_parameters():
        tower_frozen = (name.startswith("visual.") and freeze.visual) or (name.startswith("text_model.")
                                                                          and freeze.text)
        layer_frozen = _below(name, r"visual\.blocks\.(\d+)\.", "visual.", freeze.visual_layers,
                              ("visual.class_embedding", "visual.positional_embedding", "visual.patch_embed",
                               "visual.norm_pre")) or \
            _below(name, r"text_model\.encoder_stack\.block\.(\d+)\.", "text_model.", freeze.text_layers,
                   ("text_model.word_emb", "text_model.pos_emb", "text_model.ln."))
        if tower_frozen or layer_frozen:
            param.stop_gradient = True
            frozen.append(name)
    return frozen


def _below(name, block_pattern, prefix, n_layers, embedding_prefixes):
    if n_layers <= 0 or not name.startswith(prefix):
        return False
    match = re.match(block_pattern, name)
    if match:
        return int(match.group(1)) < n_layers
    return name.startswith(embedding_prefixes)


def no_decay(name):
    """Norms, biases, embeddings and the temperature are not weight-decayed."""
    return (name.endswith(".bias") or ".norm" in name or ".ln" in name or "_emb" in name or "embedding" in name
            or name.endswith("temperature_b"))


def lr_factor(step, warmup, total, min_ratio):
    """Linear warmup to 1, then cosine decay to min_ratio at `total` steps."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------- checkpoints

CKPT_PATTERN = re.compile(r"^step_(\d{8})$")


def checkpoint_dirs(output_dir):
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = CKPT_PATTERN.match(name)
        if m and os.path.isfile(os.path.join(root, name, "trainer_state.json")):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def _save_tensor_dict(state, path):
    save_weights({k: v.numpy() for k, v in state.items()}, path)


def _load_tensor_dict(layer, path):
    arrays = read_state(path)
    own = layer.state_dict()
    missing = sorted(set(own) - set(arrays))
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing[:5])}")
    for name, tensor in own.items():
        tensor.set_value(arrays[name].astype(tensor.numpy().dtype))


# ------------------------------------------------------------------------------------------- the trainer

class Trainer:
    def __init__(self, cfg):
        self.cfg = cfg
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0
        self.out_dir = cfg.output_dir
        self.loss_cfg = LossConfig.from_dict(cfg.loss.to_dict())
        self.accum = cfg.optimizer.accumulate_steps
        self.step = 0
        self.bad_steps = 0

    # -- setup
    def setup(self):
        cfg = self.cfg
        self.device = self._select_device()
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
        self.tokenizer = ErnieTokenizer.from_file(cfg.vocab_file)
        self.model_config = ModelConfig.build(cfg.model.vision, cfg.model.text, dropout=cfg.model.dropout)
        if self.model_config.text.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model.text.vocab_size {self.model_config.text.vocab_size} is smaller than "
                              f"{cfg.vocab_file} ({self.tokenizer.vocab_size} tokens)")
        paddle.seed(cfg.seed)
        self.model = ErnieViL2(self.model_config, initialize=True)
        if cfg.model.init_from_params:
            report = load_weights(self.model, cfg.model.init_from_params, strict=cfg.model.strict_load)
            if self.is_main and not report.ok:
                print(f"warning: non-strict load of {cfg.model.init_from_params}: {report.describe()}",
                      file=sys.stderr)
        elif cfg.model.init_logit_scale:
            with paddle.no_grad():
                self.model.temperature.set_value(paddle.full([1], math.log(cfg.model.init_logit_scale)))
        self.model.set_recompute(cfg.model.recompute)
        self.frozen = freeze_layers(self.model, cfg.model.freeze)
        self.views = needed_views(self.loss_cfg)
        self.encoder = MultiViewEncoder(self.model, self.views)

        self.data_index = TsvIndex(cfg.data.train_file)
        self.global_batch = cfg.data.batch_size * self.world
        self.loss_fn = MultiViewContrastiveLoss(self.loss_cfg, embed_dim=self.model.embed_dim,
                                                global_batch=self.global_batch)
        self.momentum_towers = None
        if self.loss_cfg.queue.enabled:
            self.momentum_towers = nn.LayerList([make_momentum_copy(self.model.visual),
                                                 make_momentum_copy(self.model.text_model)])
            self.momentum_towers.eval()
        batches_per_epoch = len(self.data_index) // self.global_batch
        if batches_per_epoch == 0:
            raise ConfigError(f"data.train_file has {len(self.data_index)} rows, fewer than one global batch "
                              f"({cfg.data.batch_size} x {self.world} ranks)")
        self.steps_per_epoch = max(1, batches_per_epoch // self.accum)
        self.max_steps = cfg.schedule.max_steps
        if cfg.schedule.epochs:
            self.max_steps = int(math.ceil(cfg.schedule.epochs * self.steps_per_epoch))

        params = [p for p in self.model.parameters() if not p.stop_gradient]
        decay_names = {p.name for n, p in self.model.named_parameters() if not no_decay(n)}
        sch = cfg.schedule
        self.scheduler = paddle.optimizer.lr.LambdaDecay(
            cfg.optimizer.lr, lambda s: lr_factor(s, sch.warmup_steps, self.max_steps, sch.min_lr_ratio))
        clip = nn.ClipGradByGlobalNorm(cfg.optimizer.grad_clip) if cfg.optimizer.grad_clip > 0 else None
        self.optimizer = paddle.optimizer.AdamW(
            learning_rate=self.scheduler, parameters=params, weight_decay=cfg.optimizer.weight_decay,
            apply_decay_param_fun=lambda name: name in decay_names, beta1=cfg.optimizer.beta1,
            beta2=cfg.optimizer.beta2, epsilon=cfg.optimizer.epsilon, grad_clip=clip)
        self.amp_dtype = {"off": None, "fp16": "float16", "bf16": "bfloat16"}[cfg.amp.mode]
        if cfg.amp.mode == "fp16" and self.device != "gpu":
            raise ConfigError("amp.mode fp16 needs a GPU; use bf16 or off on the CPU")
        if self.amp_dtype and cfg.amp.level == "O2":
            self.model, self.optimizer = paddle.amp.decorate(self.model, self.optimizer, level="O2",
                                                             dtype=self.amp_dtype)
        self.scaler = (paddle.amp.GradScaler(init_loss_scaling=cfg.amp.init_loss_scaling)
                       if cfg.amp.mode == "fp16" else None)

        self.resume_from = self._find_resume()
        if self.resume_from:
            self._load_checkpoint(self.resume_from)
        self.wrapped = self.encoder
        if self.world > 1:
            self.wrapped = paddle.DataParallel(self.encoder)
        self.sampler = GlobalBatchSampler(len(self.data_index), cfg.data.batch_size, self.world, self.rank,
                                          cfg.seed, cfg.data.shuffle, start_batch=self.step * self.accum)
        tags = read_tags_file(cfg.data.tags_file) if cfg.data.tags_file else None
        self.bad_row_log = os.path.join(self.out_dir, f"bad_rows.rank{self.rank}.txt")
        self.dataset = dataset = MultiViewDataset(
            self.data_index, cfg.vocab_file, cfg.seed, image_size=cfg.data.image_size,
            max_text_len=cfg.data.max_text_len, augment=cfg.data.augment, tags=tags,
            tag_prompt=self.loss_cfg.tag_prompt, tag_separator=self.loss_cfg.tag_separator,
            shuffle_tags=cfg.data.shuffle_tags, max_tags=cfg.data.max_tags, on_bad_row=cfg.data.on_bad_row,
            bad_row_log=self.bad_row_log, max_image_pixels=cfg.data.max_image_pixels)
        pad_id = self.tokenizer.pad_id
        self.loader = paddle.io.DataLoader(dataset, batch_sampler=self.sampler, num_workers=cfg.data.num_workers,
                                           collate_fn=lambda samples: collate_samples(samples, pad_id),
                                           use_shared_memory=False, persistent_workers=False,
                                           use_buffer_reader=cfg.data.num_workers > 0)
        self.metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        if self.is_main:
            self._trim_metrics()
            self._write_run_files()
        self.vdl = self._visualdl()
        return self

    def _select_device(self):
        want = self.cfg.device
        if want in ("auto", "gpu") and paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0:
            paddle.set_device(f"gpu:{paddle.distributed.ParallelEnv().dev_id}")
            return "gpu"
        if want == "gpu" and self.is_main:
            print("warning: no usable GPU in this Paddle build/machine; training on the CPU", file=sys.stderr)
        paddle.set_device("cpu")
        from .encoders import set_cpu_threads
        local_ranks = int(os.environ.get("PADDLE_LOCAL_SIZE", os.environ.get("PADDLE_TRAINERS_NUM", "1")))
        set_cpu_threads(self.cfg.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, local_ranks)))
        return "cpu"

    def _find_resume(self):
        if self.cfg.resume == "auto":
            found = checkpoint_dirs(self.out_dir)
            return found[-1] if found else None
        return self.cfg.resume

    # -- one step
    def _forward_backward(self, batch, scale_by):
        with paddle.amp.auto_cast(enable=self.amp_dtype is not None, dtype=self.amp_dtype or "float16",
                                  level=self.cfg.amp.level):
            views = self.wrapped(*(_as_tensor(batch[k]) for k in ("image_view1", "image_view2", "caption_ids",
                                                                  "tag_ids")))
        temperature = views.pop("temperature")
        losses = self.loss_fn(temperature=temperature, **views)  # queue negatives come from loss_fn.queue
        loss = losses["loss"] * scale_by
        if self.scaler:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return {k: float(v) for k, v in losses.items()}

    def train_step(self, batches):
        """One optimizer step over `accumulate_steps` micro-batches; returns the averaged loss values."""
        paddle.seed(self.cfg.seed * 1_000_003 + self.step * 9973 + self.rank)  # dropout masks follow the step
        self.model.train()
        sums = {}
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            if self.world > 1 and not last:
                with self.wrapped.no_sync():
                    values = self._forward_backward(batch, 1.0 / len(batches))
            else:
                values = self._forward_backward(batch, 1.0 / len(batches))
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v / len(batches)
        finite = math.isfinite(sums["loss"])
        skipped = False
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            found_inf = getattr(self.scaler, "_found_inf", None)
            skipped = bool(found_inf) if found_inf is not None else not finite
        elif finite:
            self.optimizer.step()
        else:
            skipped = True
        self.optimizer.clear_grad()
        if skipped:
            self.bad_steps += 1
            if self.is_main:
                print(f"warning: step {self.step + 1}: non-finite loss ({sums['loss']}); update skipped "
                      f"({self.bad_steps} in a row)", file=sys.stderr)
            if self.bad_steps > self.cfg.schedule.max_bad_steps:
                last = checkpoint_dirs(self.out_dir)
                raise TrainingError(
                    f"the loss was NaN/inf for {self.bad_steps} consecutive steps (at step {self.step + 1}); "
                    f"stopping. The weights were not updated by those steps; last good checkpoint: "
                    f"{last[-1] if last else 'none saved yet'}. Lower optimizer.lr, enable grad clipping, "
                    f"or check the data.")
        else:
            self.bad_steps = 0
            clamp_logit_scale_(self.model.temperature, max_scale=self.loss_cfg.max_logit_scale,
                               optimizer=self.optimizer)
            if self.momentum_towers is not None:
                self._update_momentum(batches)
        self.scheduler.step()
        self.step += 1
        sums["skipped_update"] = skipped
        return sums

    @paddle.no_grad()
    def _update_momentum(self, batches):
        m = self.loss_cfg.queue.momentum
        momentum_update_(self.model.visual, self.momentum_towers[0], m)
        momentum_update_(self.model.text_model, self.momentum_towers[1], m)
        img_key = f"image_view{self.loss_cfg.cross_modal_image_view}"
        for batch in batches:
            image_keys = self.momentum_towers[0](_as_tensor(batch[img_key]))
            text_keys = self.momentum_towers[1](_as_tensor(batch["caption_ids"]))
            self.loss_fn.update_queue(image_keys, text_keys)

    # -- the loop
    def fit(self):
        cfg = self.cfg
        progress = None
        if self.is_main and cfg.log.progress:
            from tqdm import tqdm
            progress = tqdm(total=self.max_steps, initial=self.step, unit="step", desc="training",
                            dynamic_ncols=True, mininterval=1.0)
        batches_iter = iter(self.loader)
        window_start, window_samples = time.time(), 0
        try:
            while self.step < self.max_steps:
                batches = [next(batches_iter) for _ in range(self.accum)]
                self._check_bad_rows(batches)
                values = self.train_step(batches)
                window_samples += self.global_batch * self.accum
                if progress:
                    progress.update(1)
                    progress.set_postfix(loss=f"{values['loss']:.4f}")
                if self.step % cfg.schedule.log_every == 0 or self.step == self.max_steps:
                    now = time.time()
                    record = self._record(values, window_samples / max(now - window_start, 1e-9), batches)
                    window_start, window_samples = now, 0
                    if cfg.schedule.eval_every and self.step % cfg.schedule.eval_every == 0:
                        record["dev"] = self.evaluate()
                    self._log(record, progress)
                elif cfg.schedule.eval_every and self.step % cfg.schedule.eval_every == 0:
                    self._log({"step": self.step, "dev": self.evaluate()}, progress)
                if cfg.schedule.save_every and self.step % cfg.schedule.save_every == 0:
                    self.save_checkpoint()
                _crash_if_asked(self.step)
        finally:
            if progress:
                progress.close()
        return self.finish()

    def _check_bad_rows(self, batches):
        for batch in batches:
            bad = np.asarray(batch["bad_index"]).reshape(-1)
            bad = bad[bad >= 0]
            if len(bad):
                epoch = (self.step * self.accum) // self.sampler.batches_per_epoch
                self.dataset.raise_bad_row(epoch, int(bad[0]))

    def _record(self, values, samples_per_sec, batches):
        g = self.step * self.accum
        record = {"step": self.step, "epoch": g // self.sampler.batches_per_epoch,
                  "samples": g * self.global_batch}
        record.update({k: v for k, v in values.items()})
        record["lr"] = self.optimizer.get_lr()
        record["logit_scale"] = paddle.exp(self.model.temperature).item()
        record["samples_per_sec"] = samples_per_sec
        record["bad_rows_skipped"] = int(sum(int(b["skipped"]) for b in batches))
        return record

    def _log(self, record, progress):
        if not self.is_main:
            return
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        if self.vdl:
            for key, value in _flatten(record).items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.vdl.add_scalar(f"train/{key}" if "/" not in key else key, value, self.step)
        if "loss" in record:
            terms = " ".join(f"{k}={record[k]:.4f}" for k in ("image_image", "text_text", "image_caption",
                                                               "image_tags") if k in record)
            line = (f"step {record['step']}/{self.max_steps} loss={record['loss']:.4f} {terms} "
                    f"lr={record['lr']:.3g} scale={record['logit_scale']:.2f} "
                    f"{record['samples_per_sec']:.1f} samples/s")
            (progress.write if progress else print)(line)

    def evaluate(self, path=None):
        """Dev-set recall with the current weights (rank 0 computes; the other ranks go on)."""
        if not self.is_main:
            return None
        from .encoders import EagerEncoder
        from .evaluation import format_table, retrieval_metrics
        from .inference import embed_file, load_infer_config
        path = path or self.cfg.data.dev_file
        infer_cfg = load_infer_config(None, self._infer_overrides(test_file=path, output_file="unused",
                                                                  init_from_params="unused"))
        infer_cfg.num_workers = 0
        infer_cfg.progress = False
        text, image, ids = embed_file(infer_cfg, EagerEncoder(self.model))
        self.model.train()
        metrics = retrieval_metrics(text, image, ids)
        print(f"dev recall at step {self.step} ({path}):\n{format_table(metrics)}", flush=True)
        return metrics

    def _infer_overrides(self, **values):
        cfg = self.cfg
        base = {"vocab_file": cfg.vocab_file, "text_model_config": os.path.join(self.out_dir, "text_config.json"),
                "vision_model": self.model_config.vision.to_dict(), "image_size": cfg.data.image_size,
                "max_text_seqlen": cfg.data.max_text_len, "infer_batch_size": cfg.data.eval_batch_size,
                "device": "gpu" if self.device == "gpu" else "cpu", "on_bad_row": cfg.data.on_bad_row,
                "pad_token": self.tokenizer.pad_id, "cls_token": self.tokenizer.cls_id,
                "sep_token": self.tokenizer.sep_id, "mask_token": self.tokenizer.mask_id}
        base.update(values)
        return list(base.items())

    # -- persistence
    def save_checkpoint(self):
        if self.is_main:
            root = os.path.join(self.out_dir, "checkpoints")
            final = os.path.join(root, f"step_{self.step:08d}")
            tmp = os.path.join(root, f".step_{self.step:08d}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
            save_weights(self.model, os.path.join(tmp, "model.safetensors"))
            paddle.save(self.optimizer.state_dict(), os.path.join(tmp, "optimizer.pdopt"))
            if self.momentum_towers is not None:
                _save_tensor_dict(self.momentum_towers.state_dict(), os.path.join(tmp, "momentum.safetensors"))
            if len(self.loss_fn.state_dict()):
                _save_tensor_dict(self.loss_fn.state_dict(), os.path.join(tmp, "loss_state.safetensors"))
            state = {"step": self.step, "global_batches": self.step * self.accum, "bad_steps": self.bad_steps,
                     "scheduler": self.scheduler.state_dict(), "world_size": self.world,
                     "scaler": _jsonable(self.scaler.state_dict()) if self.scaler else None,
                     "config": self.cfg.to_dict()}
            with open(os.path.join(tmp, "trainer_state.json"), "w", encoding="utf-8") as f:
                json.dump(state, f, indent=1, default=str)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)  # the checkpoint appears complete or not at all
            for old in checkpoint_dirs(self.out_dir)[: -self.cfg.schedule.keep_last or None]:
                shutil.rmtree(old, ignore_errors=True)
        dist.barrier()

    def _load_checkpoint(self, path):
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as f:
            state = json.load(f)
        load_weights(self.model, os.path.join(path, "model.safetensors"), strict=True)
        self.optimizer.set_state_dict(paddle.load(os.path.join(path, "optimizer.pdopt")))
        self.scheduler.set_state_dict(state["scheduler"])
        if self.momentum_towers is not None:
            _load_tensor_dict(self.momentum_towers, os.path.join(path, "momentum.safetensors"))
        if len(self.loss_fn.state_dict()):
            _load_tensor_dict(self.loss_fn, os.path.join(path, "loss_state.safetensors"))
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = state["step"]
        self.bad_steps = state.get("bad_steps", 0)
        if self.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)

    def _trim_metrics(self):
        """On resume, drop metric lines from beyond the checkpoint (they will be logged again)."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path, encoding="utf-8") as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= self.step]

        def write(tmp):
            with open(tmp, "w", encoding="utf-8") as out:
                out.writelines(keep)
        atomic_write(self.metrics_path, write)

    def _write_run_files(self):
        """The text-tower config and an inference YAML for the trained weights, so run_infer.sh can use them."""
        import yaml
        text_cfg = self.model_config.text.to_dict()
        atomic_write(os.path.join(self.out_dir, "text_config.json"),
                     lambda tmp: _write_text(tmp, json.dumps(text_cfg, indent=2)))
        infer = dict(self._infer_overrides(
            test_file=self.cfg.data.test_file or "path/to/test.tsv",
            output_file=os.path.join(self.out_dir, "test_embeddings.out"),
            init_from_params=os.path.join(self.out_dir, "final.pdparams")))
        infer["device"] = "gpu"
        infer["infer_batch_size"] = self.cfg.data.eval_batch_size
        atomic_write(os.path.join(self.out_dir, "infer.yaml"),
                     lambda tmp: _write_text(tmp, "# Inference config for this run's final weights: "
                                                  "bash run_infer.sh cpu THIS_FILE\n"
                                             + yaml.safe_dump(infer, allow_unicode=True, sort_keys=False)))

    def _visualdl(self):
        if not (self.is_main and self.cfg.log.visualdl):
            return None
        try:
            from visualdl import LogWriter
        except ImportError:
            print("warning: visualdl is not installed; no VisualDL logs", file=sys.stderr)
            return None
        return LogWriter(logdir=os.path.join(self.out_dir, "visualdl"))

    def finish(self):
        final = os.path.join(self.out_dir, "final.pdparams")
        if self.is_main:
            save_weights(state_arrays(self.model), final)
            save_weights(state_arrays(self.model), os.path.join(self.out_dir, "final.safetensors"))
            print(f"final weights: {final} (official layout) and final.safetensors", flush=True)
            if self.vdl:
                self.vdl.close()
        dist.barrier()
        return final


def _crash_if_asked(step):
    """Fault injection for the kill-and-resume test: ERNIEVIL2_KILL_AT_STEP=N SIGKILLs the process after step N."""
    at = os.environ.get("ERNIEVIL2_KILL_AT_STEP")
    if at and int(at) == step:
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def _as_tensor(x):
    return x if isinstance(x, paddle.Tensor) else paddle.to_tensor(x)


def _flatten(record, prefix=""):
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _jsonable(state):
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in state.items()}


def _write_text(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def launch_plan(cfg, gpu_count):
    """How run_train.sh starts training when it gets no launcher options: ("single",) for one process, or
    ("launch", *options) for paddle.distributed.launch (one rank per visible GPU, or cfg.cpu_processes CPU
    ranks).  The launcher's per-rank logs go to output_dir/launch_log instead of ./log."""
    logs = ("--log_dir", os.path.join(cfg.output_dir, "launch_log"))
    on_gpu = cfg.device != "cpu" and gpu_count > 0
    if on_gpu:
        return ("launch",) + logs if gpu_count > 1 else ("single",)
    if cfg.cpu_processes > 1:
        return ("launch", "--nproc_per_node", str(cfg.cpu_processes)) + logs
    return ("single",)


def run_training(cfg):
    """Initialise the collective environment (when launched with several ranks) and train."""
    if dist.get_world_size_from_env() > 1:
        from paddle.distributed import fleet
        fleet.init(is_collective=True)
    if cfg.data.generate_demo_data:
        _ensure_demo_data(cfg)
    trainer = Trainer(cfg).setup()
    final = trainer.fit()
    return trainer, final


def _ensure_demo_data(cfg):
    """(Re)generate the demo data set on rank 0 unless a complete one with the same parameters is there."""
    if dist.get_rank() == 0:
        from .demo_data import ensure_demo_data
        out_dir = os.path.dirname(os.path.abspath(cfg.data.train_file))
        _, generated = ensure_demo_data(out_dir, **cfg.data.demo_data)
        if generated:
            print(f"generated the demo data set in {out_dir}", flush=True)
    dist.barrier()
