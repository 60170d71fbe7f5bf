"""The work folder of a chunked job (infer.job): chunks, claims, fingerprints.

The input's items are cut into chunks of `chunk_rows`.  A process claims the next chunk nobody holds by creating
`chunk_NNNNNNNN.claim` in the work folder beside the output (O_CREAT|O_EXCL: one process wins), naming its host,
pid and run; while it embeds the chunk it renews the claim's lease (the file's modification time), and it removes
the claim once the chunk file is written (atomically, stamped with the job's fingerprint).  A claim whose holder is
gone (same host, process not alive) or whose lease expired (another host) is taken over.  So W ranks (the ranks of
paddle.distributed.launch, the nodes of a shared file system, or runs started twice) finish within one chunk of each
other, and a dead rank's chunk is redone by the others.  Rank 0 (PADDLE_TRAINER_ID; one process is rank 0 of 1)
then waits for every chunk, claims the merge, and concatenates the chunks in input order; the folder is removed on
success; a rank that gets to the folder only after that (started before the output was published, slowed down) has
nothing left to do.  Every chunk starts with empty caches, so its numbers do not depend on which process made it: the
output is the same for any number of ranks.  A run started again reuses the chunks whose fingerprint matches, redoes
the others (another input, config or weights, or a file a crash left unreadable) and ignores temporaries of dead
processes.
"""
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import threading
import time
import uuid

import numpy as np

from ..errors import InputError
from ..fileio import (
    NpzWriter,
    cache_home,
    process_alive,
    process_start_time,
    read_strings,
    remove_stale_temps,
    string_columns,
    write_text_atomic,
)
from .options import OUTPUT_ONLY_KEYS

logger = logging.getLogger(__name__)

FINGERPRINT_VERSION = 3  # 3: inputs and weights by content, what ran (device, engine, precision), claims
WAIT_STEP = 0.5
LEASE_SECONDS = 120.0    # a claim not renewed for this long is taken over (holders on other hosts)
HOST = socket.gethostname()


def current_rank():
    """(rank, world size) of this process under paddle.distributed.launch, else (0, 1)."""
    world = int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))
    return int(os.environ.get("PADDLE_TRAINER_ID", "0")) if world > 1 else 0, max(1, world)


# ---------------------------------------------------------------- fingerprints

def content_hash(paths, root=None):
    """sha256 of the files' bytes (and, for several, their names relative to `root`): what identifies inputs and
    weights on any node, whatever their absolute paths and times.  Cached by (path, size, mtime) of every file, so
    that unchanged files are read once."""
    paths = [os.path.abspath(p) for p in paths]
    stats = [(p, st.st_size, st.st_mtime_ns) for p, st in zip(paths, map(os.stat, paths))]
    key = hashlib.sha1(json.dumps([stats, root and os.path.abspath(root)]).encode("utf-8", "surrogateescape"))
    cached = os.path.join(cache_home(), "content_hashes", key.hexdigest())
    try:
        with open(cached, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        pass
    digest = hashlib.sha256()
    for path in paths:
        if root is not None:
            name = os.path.relpath(path, root).replace(os.sep, "/")
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                digest.update(block)
    value = digest.hexdigest()
    try:
        write_text_atomic(cached, value + "\n")
    except OSError:
        pass  # an unwritable cache: hash again next time
    return value


def source_hash(source):
    """The content hash of a gallery source (data.sources): a folder's files with their relative names, or a file."""
    if hasattr(source, "root"):
        return content_hash(source.files, root=source.root)
    return content_hash([source.path])


# Config keys about where outputs go or how work is spread (affects_output=False in the schema) may change in a
# resumed run that reuses its chunks; the device, engine and precision that actually ran are part of the
# fingerprint instead (infer.job).
# Config keys naming files: their content is in the fingerprint, not their path.
FILE_KEYS = ("test_file", "vocab_file", "init_from_params", "text_model_config", "inference_model_dir",
             "calibration_file", "images", "texts", "labels", "templates")


def config_fingerprint(cfg, inputs):
    """What a job's numbers depend on: `inputs` (content hashes of the items' files), every config value that is
    not just about where outputs go, and the content of the vocabulary, weights, export and text config files."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in OUTPUT_ONLY_KEYS and k not in FILE_KEYS}
    files = {key: content_hash([cfg[key]]) for key in ("vocab_file", "init_from_params", "text_model_config")
             if cfg[key] and os.path.isfile(cfg[key])}
    if cfg.inference_model_dir and os.path.isdir(cfg.inference_model_dir):
        files["export"] = content_hash(export_files(cfg.inference_model_dir), root=cfg.inference_model_dir)
    if cfg.precision in ("int8", "auto") and isinstance(cfg.calibration_file, str) \
            and os.path.isfile(cfg.calibration_file):
        files["calibration"] = content_hash([cfg.calibration_file])
    return fingerprint(inputs=inputs, config=values, files=files)


def export_files(model_dir):
    """The files of an export its embeddings depend on: export.json and the towers' programs and parameters."""
    names = ["export.json"]
    try:
        with open(os.path.join(model_dir, "export.json"), encoding="utf-8") as f:
            towers = json.load(f).get("towers", {})
        names += sorted(info[k] for info in towers.values() for k in ("model_file", "params_file") if k in info)
    except (OSError, ValueError, AttributeError):
        pass
    return [os.path.join(model_dir, n) for n in names if os.path.isfile(os.path.join(model_dir, n))]


def fingerprint(**parts):
    """A short stable hash of JSON-able parts (inputs, config values, weights hashes)."""
    text = json.dumps({"version": FINGERPRINT_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:20]


# ---------------------------------------------------------------- the work folder

class ChunkedRun:
    """The chunks of one output: claiming the next, writing one, waiting for all, reading them back."""

    def __init__(self, output_file, stamp, total_rows, chunk_rows, rank=0, world=1):
        self.output_file = os.path.abspath(output_file)
        self.work_dir = self.output_file + ".work"
        self.stamp, self.total, self.chunk_rows = stamp, int(total_rows), int(chunk_rows)
        self.rank, self.world = rank, world
        self.count = max(1, -(-self.total // self.chunk_rows))
        self.holder = {"host": HOST, "pid": os.getpid(), "run": uuid.uuid4().hex[:12], "rank": rank,
                       "fingerprint": stamp}
        self._lease = None
        self._progress = (-1, time.time())  # (chunks done, when that count last changed), for wait()

    def rows(self, chunk):
        """[start, stop) rows of a chunk."""
        return chunk * self.chunk_rows, min(self.total, (chunk + 1) * self.chunk_rows)

    def path(self, chunk):
        return os.path.join(self.work_dir, f"chunk_{chunk:08d}.npz")

    def claim_path(self, name):
        return os.path.join(self.work_dir, f"{name}.claim")

    def meta(self, chunk):
        """The chunk's metadata if it exists and was made from the same input, config, weights and engine, else
        None."""
        try:
            meta = self._read_meta(chunk)
        except Exception:  # noqa: BLE001 - a file a crash or a disk left unreadable is redone (start())
            return None
        return meta if meta and meta.get("fingerprint") == self.stamp else None

    def _read_meta(self, chunk):
        try:
            with np.load(self.path(chunk), allow_pickle=False) as z:
                return json.loads(z["meta"].item())
        except FileNotFoundError:
            return None

    def start(self):
        """Before any work: refuse to share the folder with a live run of another job; remove the chunks that
        another input, config or weights made or that cannot be read, and dead processes' temporaries.  Returns
        (stale chunks removed, rows reused from finished chunks), or None for a rank other than 0 that arrives
        when the job is already finished."""
        os.makedirs(self.work_dir, exist_ok=True)
        if self.rank != 0 and self._output_made_since_this_process_started():
            # Rank 0 of this launch embedded and merged every chunk (and removed the folder) before this rank got
            # here: its work would go into a folder nobody merges.
            self.remove_if_empty()
            return None
        for path in glob.glob(os.path.join(self.work_dir, "*.claim")):
            holder = _read_claim(path)
            if holder and holder.get("fingerprint") != self.stamp and self._holder_alive(path, holder):
                raise InputError(f"{self.output_file}: another run with another input, config or weights is writing "
                                 f"this output (host {holder.get('host')}, pid {holder.get('pid')}); wait for it or "
                                 f"choose another output_file")
        stale = 0
        for chunk in range(self.count):
            try:
                meta = self._read_meta(chunk)
            except Exception as e:  # noqa: BLE001 - truncated or garbage: redo it
                logger.warning("%s: unreadable (%s: %s); it is embedded again", self.path(chunk), type(e).__name__, e)
                meta = {}
            if meta is not None and meta.get("fingerprint") != self.stamp:
                _remove_file(self.path(chunk))
                stale += bool(meta)
        remove_stale_temps(os.path.join(self.work_dir, "chunk_*.npz"))  # parts of chunks killed half-written
        return stale, sum(self.rows(c)[1] - self.rows(c)[0] for c in range(self.count) if self.meta(c))

    def _output_made_since_this_process_started(self):
        """Whether the output was published after this process started.  Rank 0 publishes the output before it
        removes the folder, so a rank that finds the folder missing (or just made it) sees the output here."""
        try:
            return os.stat(self.output_file).st_mtime >= process_start_time()
        except FileNotFoundError:
            return False

    def claim_next(self):
        """Claim the first chunk that is neither finished nor held by a live process; None when there is none (for
        now).  The claim's lease is renewed until release()."""
        for chunk in range(self.count):
            if os.path.exists(self.path(chunk)) and self.meta(chunk) is not None:
                continue
            if self._claim(f"chunk_{chunk:08d}"):
                if self.meta(chunk) is not None:  # finished between the check and the claim
                    self.release()
                    continue
                return chunk
        return None

    def release(self):
        """Give up the current claim (its chunk is written, or the work failed)."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease["stop"].set()
            _remove_file(lease["path"])

    def _claim(self, name):
        path = self.claim_path(name)
        for _ in range(2):  # a second try after taking over a dead holder's claim
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_claim(path)
                if holder is not None and self._holder_alive(path, holder):
                    return False
                if not _take_over(path, holder):
                    return False
                logger.warning("%s: taking over the claim of %s", path,
                               "an unreadable holder" if holder is None else
                               f"host {holder.get('host')} pid {holder.get('pid')} (gone)")
                continue
            except FileNotFoundError:  # the folder is gone: another run finished the job
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.holder, f)
            self._lease = _renew_lease(path)
            return True
        return False

    def _holder_alive(self, path, holder):
        if holder.get("host") == HOST:
            return holder.get("pid") == os.getpid() or process_alive(int(holder.get("pid", 0)))
        try:
            return time.time() - os.stat(path).st_mtime < LEASE_SECONDS
        except FileNotFoundError:
            return False

    def write_chunk(self, chunk, matrices, strings, fill):
        """Write one chunk atomically: fill(writer) adds its rows (writer.add) and returns its metadata."""
        os.makedirs(self.work_dir, exist_ok=True)
        writer = NpzWriter(self.path(chunk), matrices=matrices, strings=strings)
        try:
            meta = fill(writer)
            meta = {**meta, "fingerprint": self.stamp, "made_by": self.holder}
            writer.finish(extra={"meta": np.array(json.dumps(meta))})
        finally:
            writer.cleanup()

    def done(self):
        """How many chunks are finished (all of them once another run of the job merged them and removed the
        folder)."""
        if not os.path.isdir(self.work_dir):
            return self.count
        return sum(self.meta(c) is not None for c in range(self.count))

    def wait(self, progress_timeout=3600.0):
        """One pause of rank 0 waiting for chunks other processes hold; fails when none arrives for a long time."""
        done = self.done()
        last, since = self._progress
        if done != last:
            self._progress = (done, time.time())
        elif time.time() - since > progress_timeout:
            raise InputError(f"{self.work_dir}: {self.count - done} of {self.count} chunks never arrived from the "
                             f"other ranks (did one fail? see its log); start the run again to resume")
        time.sleep(WAIT_STEP)

    def claim_merge(self):
        """Rank 0, every chunk done: True when this process is to merge them, False when another run is merging
        (or has merged) this output."""
        while True:
            if self._claim("merge"):
                return True
            if not os.path.isdir(self.work_dir):
                return False
            time.sleep(WAIT_STEP)

    def load(self, chunk):
        """(columns by name: matrices as arrays, texts as lists of str; meta) of a finished chunk."""
        with np.load(self.path(chunk), allow_pickle=False) as z:
            texts = string_columns(z)
            columns = {name: read_strings(z, name) for name in texts}
            parts = {f"{name}.utf8" for name in texts} | {f"{name}.offsets" for name in texts} | {"meta"}
            columns.update({name: z[name] for name in z.files if name not in parts and name not in columns})
            return columns, json.loads(z["meta"].item())

    def remove(self):
        self.release()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def remove_if_empty(self):
        """After a failure: a work folder without one finished chunk holds nothing to resume from."""
        self.release()
        try:
            os.rmdir(self.work_dir)
        except OSError:
            pass


def _read_claim(path):
    """The holder a claim names, or None when it cannot be read (a claim being written, or garbage)."""
    try:
        with open(path, encoding="utf-8") as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else None
    except FileNotFoundError:
        return {}  # released meanwhile: nobody holds it
    except (OSError, ValueError):
        return None


def _take_over(path, holder):
    """Move a dead holder's claim aside (one process wins the rename) and check it was the one judged dead."""
    if holder == {}:
        return True  # released meanwhile
    if holder is None:  # unreadable: maybe a claim being written this instant; take it over once it is old
        try:
            if time.time() - os.stat(path).st_mtime < 5.0:
                return False
        except FileNotFoundError:
            return True
    aside = f"{path}.dead-{HOST}-{os.getpid()}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process took it over first: try to claim it again
    if holder is not None and _read_claim(aside) != holder:  # a live claim replaced it meanwhile: put it back
        try:
            os.link(aside, path)
        except OSError:
            pass
        _remove_file(aside)
        return False
    _remove_file(aside)
    return True


def _renew_lease(path):
    """A thread touching the claim every LEASE_SECONDS / 4 until stopped."""
    stop = threading.Event()

    def renew():
        while not stop.wait(LEASE_SECONDS / 4):
            try:
                os.utime(path)
            except OSError:
                return

    threading.Thread(target=renew, name="claim-lease", daemon=True).start()
    return {"path": path, "stop": stop}


def _remove_file(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def leftover_chunks(output_file):
    """Chunk files of earlier runs of this output (to report what a resumed run found)."""
    return glob.glob(os.path.join(os.path.abspath(output_file) + ".work", "chunk_*.npz"))
