"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a directory `output_dir/checkpoints/step_NNNNNNNN/` with the weights (model.safetensors, in
the official key layout), the optimizer state (optimizer.pdopt), the momentum towers and the loss module's
state (the queue) when the run has them, and trainer_state.json (step, LR schedule, loss scaler, config).  It
is written under a temporary name and renamed, so a directory with that name is always complete; the newest
`keep_last` are kept.
"""
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Any

import paddle

from ..errors import TrainingError
from ..fileio import remove_stale_temps, swap_in_folder, temp_path_for
from ..model.weights import load_weights, read_raw_state, save_weights

CKPT_PATTERN = re.compile(r"^step_(\d{8})$")
STATE_FILE = "trainer_state.json"


@dataclass
class TrainingParts:
    """The stateful objects of a run (momentum_towers and scaler may be None)."""
    model: Any
    optimizer: Any
    scheduler: Any
    momentum_towers: Any
    loss_fn: Any
    scaler: Any


def checkpoint_dirs(output_dir):
    """Complete checkpoints of a run, oldest first."""
    root = os.path.join(output_dir, "checkpoints")
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        m = CKPT_PATTERN.match(name)
        if m and os.path.isfile(os.path.join(root, name, STATE_FILE)):
            found.append((int(m.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


def write_checkpoint(output_dir, step, state, parts, keep_last=0):
    """Write step `step`'s checkpoint (state: the JSON-able trainer fields); prune all but the newest keep_last
    (0 keeps all).  Returns its directory."""
    root = os.path.join(output_dir, "checkpoints")
    final = os.path.join(root, f"step_{step:08d}")
    remove_stale_temps(os.path.join(root, "step_*"))  # what runs killed while saving left behind
    tmp = temp_path_for(final)
    os.makedirs(tmp)
    try:
        # the parameters in their own dtype (float64 with dtype float64): a resumed run continues bit for bit
        _save_tensor_dict(parts.model.state_dict(), os.path.join(tmp, "model.safetensors"))
        paddle.save(parts.optimizer.state_dict(), os.path.join(tmp, "optimizer.pdopt"))
        if parts.momentum_towers is not None:
            _save_tensor_dict(parts.momentum_towers.state_dict(), os.path.join(tmp, "momentum.safetensors"))
        if len(parts.loss_fn.state_dict()):
            _save_tensor_dict(parts.loss_fn.state_dict(), os.path.join(tmp, "loss_state.safetensors"))
        state = dict(state, scheduler=parts.scheduler.state_dict(),
                     scaler=_jsonable(parts.scaler.state_dict()) if parts.scaler else None)
        with open(os.path.join(tmp, STATE_FILE), "w", encoding="utf-8") as f:
            json.dump(state, f, indent=1, default=str)
        swap_in_folder(tmp, final)  # flushed to disk, then published: complete or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # only left when something above failed
    for old in checkpoint_dirs(output_dir)[:-keep_last] if keep_last else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(path, parts):
    """Restore `parts` from the checkpoint directory `path`; returns its trainer state (step, ...)."""
    with open(os.path.join(path, STATE_FILE), encoding="utf-8") as f:
        state = json.load(f)
    load_weights(parts.model, os.path.join(path, "model.safetensors"), strict=True)
    parts.optimizer.set_state_dict(paddle.load(os.path.join(path, "optimizer.pdopt")))
    parts.scheduler.set_state_dict(state["scheduler"])
    if parts.momentum_towers is not None:
        _load_tensor_dict(parts.momentum_towers, os.path.join(path, "momentum.safetensors"))
    if len(parts.loss_fn.state_dict()):
        _load_tensor_dict(parts.loss_fn, os.path.join(path, "loss_state.safetensors"))
    if parts.scaler and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    return state


def _save_tensor_dict(state, path):
    save_weights({k: v.numpy() for k, v in state.items()}, path)


def _load_tensor_dict(layer, path):
    arrays = read_raw_state(path)
    own = layer.state_dict()
    missing = sorted(set(own) - set(arrays))
    if missing:
        raise TrainingError(f"{path}: checkpoint lacks {', '.join(missing[:5])}")
    for name, tensor in own.items():
        tensor.set_value(arrays[name].astype(tensor.numpy().dtype))


def _jsonable(state):
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in state.items()}
