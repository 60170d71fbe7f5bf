"""The multi-view contrastive trainer: one process to many nodes through Paddle's collective (fleet) mode.

One optimizer step = `optimizer.accumulate_steps` global batches.  Each global batch is split across ranks;
the loss module gathers embeddings so every rank's loss sees the whole global batch.  Checkpoints hold
everything a run needs to continue exactly (weights, optimizer + LR schedule, loss scaler, momentum towers and
queue, step); data order, augmentation and dropout are functions of (seed, step/epoch, index), so a resumed
run ends with the same weights as an uninterrupted one.
"""
import json
import logging
import math
import os
import time

import cv2
import numpy as np
import paddle
import paddle.nn as nn
from paddle.static import InputSpec

from ..data.row_index import RowIndex, prepare_row_index
from ..data.tokenizer import ErnieTokenizer
from ..errors import ConfigError, TrainingError
from ..eval.metrics import format_table, retrieval_metrics
from ..fileio import write_text_atomic
from ..infer.engines import EagerEncoder
from ..infer.options import PipelineOptions
from ..infer.run import embed_file
from ..interop.convert import load_any_layout
from ..model.configs import ModelConfig
from ..model.dual_encoder import ErnieViL2
from ..model.weights import save_weights, state_arrays
from ..runtime import die_with_parent, gpu_count, resolve_device, set_cpu_threads
from . import distributed as dist
from .checkpoints import TrainingParts, checkpoint_dirs, read_checkpoint, write_checkpoint
from .data import MultiViewDataset, collate_samples, read_tags_file
from .loss_config import LossConfig
from .losses import MultiViewContrastiveLoss, clamp_logit_scale_, make_momentum_copy, momentum_update_
from .optim import freeze_layers, make_optimizer
from .order import GlobalBatchSampler
from .view_colour import colour_views

logger = logging.getLogger(__name__)


class MultiViewEncoder(nn.Layer):
    """Runs the towers on the views the active loss terms need.  Wrapped by DataParallel as a whole, and it
    returns the temperature through an op: DataParallel must see every trainable parameter used in forward."""

    def __init__(self, model, views):
        super().__init__()
        self.model = model
        self.views = views

    def forward(self, image_view1, image_view2, caption_ids, tag_ids):
        out = {}
        images = {name: x for name, x in (("image_view1", image_view1), ("image_view2", image_view2))
                  if name in self.views}
        if images:
            out.update(_per_view(self.model.encode_image, images))
        # text_view2 is a second pass of the caption: dropout makes it a second view of the same text
        texts = {name: caption_ids for name in ("text_view1", "text_view2") if name in self.views}
        if texts:
            out.update(_per_view(self.model.encode_text, texts))
        if "tags" in self.views:
            out["tags"] = self.model.encode_text(tag_ids)
        out["temperature"] = self.model.temperature.clone()
        return out


def static_towers(encoder, image_size, device):
    """The encoder's forward, and so its backward, as one static program (paddle.jit.to_static) instead of op by
    op from Python: the same values (the forward's bit for bit), ~1.2-1.4x faster for a small model on a CPU core,
    where per-op overhead outweighs the arithmetic.  The batch and text-length dimensions are left open, so one
    program serves every step.  On the CPU it sets FLAGS_new_executor_serial_run for the process: the executor
    would schedule the program's ops on extra threads, and a CPU rank's math already has its cores."""
    if device == "cpu":
        paddle.set_flags({"FLAGS_new_executor_serial_run": True})
    # pixels arrive as float32 in every mode (a float64 model casts them itself, model.vision)
    image = InputSpec([None, 3, image_size, image_size], "float32")
    ids = InputSpec([None, None], "int64")
    return paddle.jit.to_static(encoder, input_spec=[image, image, ids, ids], full_graph=True)


def _per_view(encode, inputs):
    """{name: embeddings} of equally shaped inputs, encoded in one pass of the tower (one batch of all rows:
    fewer, larger kernels than a pass per view; dropout draws a mask per row either way)."""
    if len(inputs) == 1:
        return {name: encode(x) for name, x in inputs.items()}
    embeddings = encode(paddle.concat(list(inputs.values())))
    return dict(zip(inputs, paddle.split(embeddings, len(inputs))))


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

    # -- setup, in named steps
    def setup(self):
        self.device = self._select_device()
        if self.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
        self.tokenizer = ErnieTokenizer.from_file(self.cfg.vocab_file)
        # dtype float64: parameters, queue buffers and optimizer state are created in the default dtype
        paddle.set_default_dtype(self.cfg.dtype)
        self._build_model()
        self.data_index = self._index_training_data()
        self.global_batch = self.cfg.data.batch_size * self.world
        self._plan_steps()
        self._build_loss()
        self._build_optimizer()
        self.resume_from = self._find_resume()
        if self.resume_from:
            self._load_checkpoint(self.resume_from)
        if self.cfg.to_static:
            self.encoder = static_towers(self.encoder, self.cfg.data.image_size, self.device)
            if self.is_main:
                logger.info("to_static: the towers run as a static program")
        self.wrapped = paddle.DataParallel(self.encoder) if self.world > 1 else self.encoder
        self._build_loader()
        self.metrics_path = os.path.join(self.out_dir, "metrics.jsonl")
        if self.is_main:
            self._trim_metrics()
            self._write_run_files()
        self.vdl = self._visualdl()
        return self

    def _select_device(self):
        gpu_index = paddle.distributed.ParallelEnv().dev_id if gpu_count() else None  # this rank's GPU
        device = resolve_device(self.cfg.device, gpu_index=gpu_index, warn=self.is_main)
        if device == "cpu":
            local_ranks = int(os.environ.get("PADDLE_LOCAL_SIZE", os.environ.get("PADDLE_TRAINERS_NUM", "1")))
            set_cpu_threads(self.cfg.cpu_threads, local_ranks=local_ranks)
        return device

    def _build_model(self):
        cfg = self.cfg
        self.model_config = ModelConfig.build(cfg.model.vision, cfg.model.text, dropout=cfg.model.dropout)
        if self.model_config.text.vocab_size < self.tokenizer.vocab_size:
            raise ConfigError(f"model.text.vocab_size {self.model_config.text.vocab_size} is smaller than "
                              f"{cfg.vocab_file} ({self.tokenizer.vocab_size} tokens)")
        paddle.seed(cfg.seed)
        # a strict load overwrites every weight: drawing them first costs seconds for Base and changes nothing
        from_scratch = not (cfg.model.init_from_params and cfg.model.strict_load)
        self.model = ErnieViL2(self.model_config, initialize=from_scratch, init_scheme=cfg.model.init_scheme)
        if cfg.model.init_from_params:
            report = load_any_layout(self.model, cfg.model.init_from_params, strict=cfg.model.strict_load)
            if self.is_main and not report.ok:
                logger.warning("non-strict load of %s: %s", cfg.model.init_from_params, report.describe())
        elif cfg.model.init_logit_scale:
            with paddle.no_grad():
                self.model.temperature.set_value(paddle.full([1], math.log(cfg.model.init_logit_scale)))
        self.model.set_recompute(cfg.model.recompute)
        self.frozen = freeze_layers(self.model, cfg.model.freeze)
        self.views = self.loss_cfg.needed_views()
        self.encoder = MultiViewEncoder(self.model, self.views)

    def _index_training_data(self):
        """The rows of data.train_file: the ranks of each machine share the scan of the files not yet in the
        row-index cache (local rank r of n scans files r, r + n, ...), then every rank memory-maps the offsets (no
        rank holds per-row data)."""
        local_rank, local_size = (int(os.environ.get(k, d)) for k, d in (("PADDLE_LOCAL_RANK", "0"),
                                                                          ("PADDLE_LOCAL_SIZE", "1")))
        prepare_row_index(self.cfg.data.train_file, local_rank, local_size, what="training data")
        dist.barrier()
        return RowIndex(self.cfg.data.train_file, what="training data")

    def _plan_steps(self):
        """Steps per epoch and in all (schedule.epochs, if set, overrides schedule.max_steps)."""
        batches_per_epoch = len(self.data_index) // self.global_batch
        if batches_per_epoch == 0:
            raise ConfigError(f"data.train_file has {len(self.data_index)} rows, fewer than one global batch "
                              f"({self.cfg.data.batch_size} x {self.world} ranks)")
        self.steps_per_epoch = max(1, batches_per_epoch // self.accum)
        self.max_steps = self.cfg.schedule.max_steps
        if self.cfg.schedule.epochs:
            self.max_steps = int(math.ceil(self.cfg.schedule.epochs * self.steps_per_epoch))

    def _build_loss(self):
        self.loss_fn = MultiViewContrastiveLoss(self.loss_cfg, embed_dim=self.model.embed_dim,
                                                global_batch=self.global_batch)
        self.momentum_towers = None
        if self.loss_cfg.queue.enabled:
            self.momentum_towers = nn.LayerList([make_momentum_copy(self.model.visual),
                                                 make_momentum_copy(self.model.text_model)])
            self.momentum_towers.eval()

    def _build_optimizer(self):
        cfg = self.cfg
        self.scheduler, self.optimizer = make_optimizer(self.model, cfg.optimizer, cfg.schedule, self.max_steps)
        self.amp_dtype = {"off": None, "fp16": "float16", "bf16": "bfloat16"}[cfg.amp.mode]
        if cfg.amp.mode == "fp16" and self.device != "gpu":
            raise ConfigError("amp.mode fp16 needs a GPU; use bf16 or off on the CPU")
        if self.amp_dtype and cfg.amp.level == "O2":
            self.model, self.optimizer = paddle.amp.decorate(self.model, self.optimizer, level="O2",
                                                             dtype=self.amp_dtype)
        self.scaler = (paddle.amp.GradScaler(init_loss_scaling=cfg.amp.init_loss_scaling)
                       if cfg.amp.mode == "fp16" else None)

    def _build_loader(self):
        cfg = self.cfg
        work = cfg.data.colour_work
        self.colour_on_device = work == "device" or (work == "auto" and self.device == "gpu")
        self.sampler = GlobalBatchSampler(self.data_index.counts, cfg.data.batch_size, self.world, self.rank,
                                          cfg.seed, cfg.data.shuffle, start_batch=self.step * self.accum,
                                          window=cfg.data.shuffle_window)
        tags = read_tags_file(cfg.data.tags_file, "data.tags_file") if cfg.data.tags_file else None
        self.bad_row_log = os.path.join(self.out_dir, f"bad_rows.rank{self.rank}.txt")
        self.dataset = MultiViewDataset(
            self.data_index, cfg.vocab_file, cfg.seed, image_size=cfg.data.image_size,
            max_text_len=cfg.data.max_text_len, augment=cfg.data.augment, tags=tags,
            tag_prompt=self.loss_cfg.tag_prompt, tag_separator=self.loss_cfg.tag_separator,
            shuffle_tags=cfg.data.shuffle_tags, max_tags=cfg.data.max_tags, on_bad_row=cfg.data.on_bad_row,
            bad_row_log=self.bad_row_log, max_image_pixels=cfg.data.max_image_pixels,
            colour_on_device=self.colour_on_device)
        if cfg.data.num_workers > 0:
            # The forked workers are the parallelism.  OpenCV's thread count is set here, before the fork: set in
            # a worker whose parent had used OpenCV's thread pool (rank 0 draws the demo data), it deadlocked.
            cv2.setNumThreads(1)
        pad_id = self.tokenizer.pad_id
        self.loader = paddle.io.DataLoader(self.dataset, batch_sampler=self.sampler,
                                           num_workers=cfg.data.num_workers,
                                           collate_fn=lambda samples: collate_samples(samples, pad_id),
                                           use_shared_memory=False, persistent_workers=False,
                                           worker_init_fn=_die_with_rank,
                                           use_buffer_reader=cfg.data.num_workers > 0)

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
        # queue negatives come from loss_fn.queue; identities let it leave duplicates out of the negatives
        losses = self.loss_fn(temperature=temperature, identities=_identities(batch), **views)
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
        batches = [_coloured(batch) for batch in batches]  # once per step, in float32 outside AMP
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
                logger.warning("step %d: non-finite loss (%s); update skipped (%d in a row)", self.step + 1,
                               sums["loss"], self.bad_steps)
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
            self.loss_fn.update_queue(image_keys, text_keys, _identities(batch))

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
                if cfg.schedule.eval_every and self.step % cfg.schedule.eval_every == 0:
                    dist.barrier()  # while rank 0 evaluates, the others wait here, not in a collective
                if cfg.schedule.save_every and self.step % cfg.schedule.save_every == 0:
                    self.save_checkpoint()
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
        path = path or self.cfg.data.dev_file
        text, image, ids = embed_file(path, self._eval_pipeline(), EagerEncoder(self.model))
        self.model.train()
        metrics = retrieval_metrics(text, image, ids)
        logger.info("dev recall at step %d (%s):\n%s", self.step, path, format_table(metrics))
        return metrics

    def _eval_pipeline(self):
        data = self.cfg.data
        return PipelineOptions(vocab_file=self.cfg.vocab_file, max_text_len=data.max_text_len,
                               image_size=data.image_size, batch_size=data.eval_batch_size, num_workers=0,
                               max_image_pixels=data.max_image_pixels, on_bad_row=data.on_bad_row)

    def _infer_config(self, **values):
        """An inference config (run_infer.sh's YAML keys) for this run's model."""
        cfg = self.cfg
        base = {"vocab_file": cfg.vocab_file, "text_model_config": os.path.join(self.out_dir, "text_config.json"),
                "vision_model": self.model_config.vision.to_dict(), "image_size": cfg.data.image_size,
                "max_text_seqlen": cfg.data.max_text_len, "infer_batch_size": cfg.data.eval_batch_size,
                "device": "gpu" if self.device == "gpu" else "cpu", "on_bad_row": cfg.data.on_bad_row,
                "pad_token": self.tokenizer.pad_id, "cls_token": self.tokenizer.cls_id,
                "sep_token": self.tokenizer.sep_id, "mask_token": self.tokenizer.mask_id}
        base.update(values)
        return base

    # -- persistence
    def save_checkpoint(self):
        if self.is_main:
            state = {"step": self.step, "global_batches": self.step * self.accum, "bad_steps": self.bad_steps,
                     "world_size": self.world, "config": self.cfg.to_dict()}
            write_checkpoint(self.out_dir, self.step, state, self._checkpointed(),
                             keep_last=self.cfg.schedule.keep_last)
        dist.barrier()

    def _load_checkpoint(self, path):
        state = read_checkpoint(path, self._checkpointed())
        self.step = state["step"]
        self.bad_steps = state.get("bad_steps", 0)
        if self.is_main:
            logger.info("resumed from %s at step %d", path, self.step)

    def _checkpointed(self):
        return TrainingParts(model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                             momentum_towers=self.momentum_towers, loss_fn=self.loss_fn, scaler=self.scaler)

    def _trim_metrics(self):
        """On resume, drop metric lines from beyond the checkpoint (they will be logged again)."""
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path, encoding="utf-8") as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= self.step]

        write_text_atomic(self.metrics_path, "".join(keep))

    def _write_run_files(self):
        """The text-tower config and an inference YAML for the trained weights, so run_infer.sh can use them."""
        import yaml
        write_text_atomic(os.path.join(self.out_dir, "text_config.json"),
                          json.dumps(self.model_config.text.to_dict(), indent=2))
        infer = self._infer_config(
            test_file=self.cfg.data.test_file or "path/to/test.tsv",
            output_file=os.path.join(self.out_dir, "test_embeddings.out"),
            init_from_params=os.path.join(self.out_dir, "final.pdparams"))
        infer["device"] = "gpu"
        write_text_atomic(os.path.join(self.out_dir, "infer.yaml"),
                          "# Inference config for this run's final weights: bash run_infer.sh cpu THIS_FILE\n"
                          + yaml.safe_dump(infer, allow_unicode=True, sort_keys=False))

    def _visualdl(self):
        if not (self.is_main and self.cfg.log.visualdl):
            return None
        try:
            from visualdl import LogWriter
        except ImportError:
            logger.warning("visualdl is not installed; no VisualDL logs")
            return None
        return LogWriter(logdir=os.path.join(self.out_dir, "visualdl"))

    def finish(self):
        final = os.path.join(self.out_dir, "final.pdparams")
        if self.is_main:
            save_weights(state_arrays(self.model), final)
            save_weights(state_arrays(self.model), os.path.join(self.out_dir, "final.safetensors"))
            logger.info("final weights: %s (official layout) and final.safetensors", final)
            if self.vdl:
                self.vdl.close()
        dist.barrier()
        return final


def _die_with_rank(worker_id):
    die_with_parent()  # a data-loader worker ends with its rank, whatever kills the rank


def _identities(batch):
    """The rows' image, caption and tag keys (train.data.identity_key) for loss.mask_duplicates."""
    return {"image": _as_tensor(batch["image_key"]), "caption": _as_tensor(batch["caption_key"]),
            "tags": _as_tensor(batch["tag_key"])}


def _coloured(batch):
    """The batch with its image views as the tower takes them: those the loader left as uint8 crops and colour
    draws (data.colour_work: device) are coloured here, for the forward pass and the momentum queue alike."""
    keys = [key for key in ("image_view1", "image_view2") if f"{key}_colour" in batch]
    if not keys:
        return batch
    out = {name: value for name, value in batch.items() if not name.endswith("_colour")}
    out.update({key: colour_views(batch[key], batch[f"{key}_colour"]) for key in keys})
    return out


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
        from ..data.demo import ensure_demo_data
        out_dir = os.path.dirname(os.path.abspath(cfg.data.train_file))
        _, generated = ensure_demo_data(out_dir, **cfg.data.demo_data)
        if generated:
            logger.info("generated the demo data set in %s", out_dir)
    dist.barrier()
