"""Fault injection for the tests that kill runs on purpose; production modules hold no hook.

Python imports `sitecustomize` at start-up from the path, so a process started with this folder first on PYTHONPATH
(tests/faults/__init__.py: `fault_env`) loads this file, and so do the ranks and workers it starts (they inherit the
environment).  The functions below are wrapped when their module is first imported:

ERNIEVIL2_KILL_AT_STEP=N       SIGKILL a training process after step N (and its checkpoint), before step N+1.
ERNIEVIL2_SLOW_CHUNKS=S        sleep S seconds before each chunk an inference rank writes.
ERNIEVIL2_STOP_AFTER_CHUNKS=N  SIGKILL an inference rank once it has written N chunks.
ERNIEVIL2_START_AFTER=PATH     an inference rank waits until PATH exists before it opens the work folder (a rank
                               that a busy machine slowed down until rank 0 had finished).
"""
import functools
import importlib.abc
import os
import signal
import sys
import time


def _kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def _patch_trainer(module):
    at = os.environ.get("ERNIEVIL2_KILL_AT_STEP")
    if not at:
        return
    train_step = module.Trainer.train_step

    @functools.wraps(train_step)
    def killing_train_step(self, batches):
        if self.step == int(at):  # step `at` and its checkpoint are done
            _kill_self()
        return train_step(self, batches)
    module.Trainer.train_step = killing_train_step


def _patch_chunks(module):
    _patch_start(module)
    slow, stop = os.environ.get("ERNIEVIL2_SLOW_CHUNKS"), os.environ.get("ERNIEVIL2_STOP_AFTER_CHUNKS")
    if not (slow or stop):
        return
    write_chunk = module.ChunkedRun.write_chunk
    written = [0]

    @functools.wraps(write_chunk)
    def faulty_write_chunk(self, *args, **kwargs):
        if slow:  # before the chunk is written: a kill meanwhile leaves a claimed, unfinished chunk
            time.sleep(float(slow))
        result = write_chunk(self, *args, **kwargs)
        written[0] += 1
        if stop and written[0] >= int(stop):
            _kill_self()
        return result
    module.ChunkedRun.write_chunk = faulty_write_chunk


def _patch_start(module):
    after = os.environ.get("ERNIEVIL2_START_AFTER")
    if not after:
        return
    start = module.ChunkedRun.start

    @functools.wraps(start)
    def late_start(self, *args, **kwargs):
        deadline = time.time() + 600
        while not os.path.exists(after) and time.time() < deadline:
            time.sleep(0.05)
        return start(self, *args, **kwargs)
    module.ChunkedRun.start = late_start


PATCHES = {"ernievil2.train.trainer": _patch_trainer, "ernievil2.infer.sharding": _patch_chunks}


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the patched modules through the other finders and wraps their loading with the patch."""

    def find_spec(self, name, path, target=None):
        patch = PATCHES.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec


if any(os.environ.get(name) for name in ("ERNIEVIL2_KILL_AT_STEP", "ERNIEVIL2_SLOW_CHUNKS",
                                         "ERNIEVIL2_STOP_AFTER_CHUNKS", "ERNIEVIL2_START_AFTER")):
    sys.meta_path.insert(0, _PatchOnImport())
