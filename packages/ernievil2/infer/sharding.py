"""Sharded, resumable embedding runs.

The input's rows are cut into chunks of `chunk_rows`; rank r of W (paddle.distributed.launch's
PADDLE_TRAINER_ID / PADDLE_TRAINERS_NUM; one process is rank 0 of 1) embeds the chunks c with c % W == r into a
work folder beside the output, each chunk written atomically and stamped with a fingerprint of the input files,
the config and the weights.  Rank 0 then waits for every chunk and concatenates them in order into the outputs;
the folder is removed on success.  Every chunk starts with empty caches, so its numbers do not depend on which
rank made it: the output is the same for any number of ranks.  A run started again reuses the chunks whose
fingerprint matches and refuses (removes) the others.  Several nodes need the work folder on a shared file system.
"""
import glob
import hashlib
import json
import os
import shutil
import time

import numpy as np

from ..errors import InputError
from ..fileio import NpzWriter, remove_stale_temps

FINGERPRINT_VERSION = 2  # 2: one chunk layout for every job (infer.job)
WAIT_STEP = 0.5


def current_rank():
    """(rank, world size) of this process under paddle.distributed.launch, else (0, 1)."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")) if world > 1 else 0, max(1, world)


def file_stamp(path):
    """What identifies a file's content cheaply: absolute path, size and modification time."""
    if not path:
        return None
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


# Config keys about where outputs go or how work is spread: a resumed run may change them and reuse its chunks.
OUTPUT_ONLY_KEYS = ("test_file", "output_file", "bad_row_log", "write_sidecar", "progress", "num_workers",
                    "prefetch_batches", "device", "cpu_processes")


def config_fingerprint(cfg, inputs):
    """What a run's numbers depend on: its inputs' stamps, every config value that is not just about where
    outputs go, and the vocabulary, weights, export and text config files."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_ONLY_KEYS}
    files = {key: file_stamp(cfg[key]) for key in ("vocab_file", "init_from_params", "text_model_config")
             if cfg[key] and os.path.isfile(cfg[key])}
    if cfg.inference_model_dir:
        files["export"] = file_stamp(os.path.join(cfg.inference_model_dir, "export.json"))
    return fingerprint(inputs=inputs, config=values, files=files)


def fingerprint(**parts):
    """A short stable hash of JSON-able parts (inputs, config values, weights stamps)."""
    text = json.dumps({"version": FINGERPRINT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


class ChunkedRun:
    """The chunks of one output: which are this rank's, which are done, writing one, waiting for all."""

    def __init__(self, output_file, stamp, total_rows, chunk_rows, rank=0, world=1):
        self.work_dir = os.path.abspath(output_file) + ".work"
        self.stamp, self.total, self.chunk_rows = stamp, int(total_rows), int(chunk_rows)
        self.rank, self.world = rank, world
        self.count = max(1, -(-self.total // self.chunk_rows))

    def rows(self, chunk):
        """[start, stop) rows of a chunk."""
        return chunk * self.chunk_rows, min(self.total, (chunk + 1) * self.chunk_rows)

    def mine(self):
        return [c for c in range(self.count) if c % self.world == self.rank]

    def path(self, chunk):
        return os.path.join(self.work_dir, f"chunk_{chunk:08d}.npz")

    def meta(self, chunk):
        """The chunk's metadata if it exists and was made from the same input, config and weights, else None."""
        try:
            with np.load(self.path(chunk), allow_pickle=False) as z:
                meta = json.loads(z["meta"].item())
        except (OSError, ValueError, KeyError):
            return None
        return meta if meta.get("fingerprint") == self.stamp else None

    def refuse_stale(self, chunks):
        """Remove chunk files of these chunks that another input, config or weights made; returns how many."""
        if not os.path.isdir(self.work_dir):
            return 0
        stale = [c for c in chunks if os.path.exists(self.path(c)) and self.meta(c) is None]
        for c in stale:
            os.remove(self.path(c))
        remove_stale_temps(os.path.join(self.work_dir, "chunk_*.npz"))  # parts of chunks killed half-written
        return len(stale)

    def plan(self):
        """This rank's work: (stale chunks removed, chunks still to write, rows reused from finished chunks)."""
        stale = self.refuse_stale(self.mine())
        todo = [c for c in self.mine() if self.meta(c) is None]
        return stale, todo, sum(self.rows(c)[1] - self.rows(c)[0] for c in self.mine() if c not in todo)

    def write_chunk(self, chunk, matrices, strings, fill):
        """Write one chunk atomically: fill(writer) adds its rows (writer.add) and returns its metadata."""
        os.makedirs(self.work_dir, exist_ok=True)
        writer = NpzWriter(self.path(chunk), matrices=matrices, strings=strings)
        try:
            meta = fill(writer)
            writer.finish(extra={"meta": np.array(json.dumps({**meta, "fingerprint": self.stamp}))})
        finally:
            writer.cleanup()

    def wait_for_all(self, progress_timeout=3600.0):
        """Block until every chunk is done (rank 0, before merging); fail when none appears for a long time."""
        last, last_change = -1, time.time()
        while True:
            done = sum(self.meta(c) is not None for c in range(self.count))
            if done == self.count:
                return
            if done != last:
                last, last_change = done, time.time()
            elif time.time() - last_change > progress_timeout:
                raise InputError(f"{self.work_dir}: {self.count - done} of {self.count} chunks never arrived from "
                                 f"the other ranks (did one fail? see its log); start the run again to resume")
            time.sleep(WAIT_STEP)

    def load(self, chunk):
        """(arrays by name, meta) of a finished chunk."""
        with np.load(self.path(chunk), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files if name != "meta"}
            return arrays, json.loads(z["meta"].item())

    def remove(self):
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def remove_if_empty(self):
        """After a failure: a work folder without one finished chunk holds nothing to resume from."""
        try:
            os.rmdir(self.work_dir)
        except OSError:
            pass


def leftover_chunks(output_file):
    """Chunk files of earlier runs of this output (to report what a resumed run found)."""
    return glob.glob(os.path.join(os.path.abspath(output_file) + ".work", "chunk_*.npz"))
