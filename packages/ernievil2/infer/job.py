"""The chunked embedding job that run_infer.sh, `embed` and `zeroshot` are uses of.

A command describes its work as a `ChunkedJob`: how many items its input has, the columns a chunk holds, how to
embed the items [first, stop) into a chunk (`fill`) and how to merge the finished chunks, in order, into its
outputs (`merge_chunk` / `finish_merge`).  `run_job` does the rest the same way for all three: the work folder
and its chunks (infer.sharding), claiming chunks until none is left, one worker pool for all of this process's
chunks, the bad-row policy, the progress bar, rank 0's merge and one `ChunkSummary`.
"""
import logging
import time
from dataclasses import dataclass, field

from ..data.tsv import BadRow, BadRowPolicy
from ..fileio import remove_stale_temps
from .sharding import ChunkedRun, current_rank, fingerprint
from .workers import start_pool

logger = logging.getLogger(__name__)


@dataclass
class ChunkSummary:
    """What a chunked job did: items read, written, skipped by reason; job-specific counts and lines."""
    noun: str = "item"          # what an item is ("row", "image", ...), for the report
    verb: str = "written"       # what happened to the good ones ("written", "embedded", "classified")
    read: int = 0
    written: int = 0
    counts: dict = field(default_factory=dict)     # the job's own additive counts (e.g. images_encoded)
    skipped: dict = field(default_factory=dict)
    seconds: float = 0.0
    output_file: str = ""
    also_written: list = field(default_factory=list)  # further output files (the sidecar)
    bad_row_log: str = ""
    rank: int = 0
    world: int = 1
    reused: int = 0             # items of chunks an earlier run finished
    stale_chunks: int = 0       # chunks of an earlier run with another input, config or weights, removed
    notes: list = field(default_factory=list)      # the job's own report lines
    accuracy: dict = None       # zero-shot accuracy on labelled images

    def lines(self):
        if self.rank:
            return [f"rank {self.rank} of {self.world}: done (rank 0 writes {self.output_file})", *self.notes]
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        outputs = self.output_file + "".join(f" (+ {path})" for path in self.also_written)
        out = [f"{self.noun}s read: {self.read}, {self.verb}: {self.written}, skipped: {sum(self.skipped.values())}",
               *self.notes, f"time: {self.seconds:.1f} s, {rate:.2f} {self.noun}s/s", f"output: {outputs}"]
        if self.world > 1:
            out.append(f"ranks: {self.world} (rank 0's summary; the ranks shared the chunks)")
        if self.reused:
            out.append(f"resumed: reused {self.reused} {self.noun}s embedded by an earlier run")
        if self.stale_chunks:
            out.append(f"refused {self.stale_chunks} chunk(s) of an earlier run with another input, config or "
                       f"weights")
        out += [f"  skipped {count} {self.noun}(s): {reason}" for reason, count in sorted(self.skipped.items())]
        if self.bad_row_log:
            out.append(f"skipped {self.noun}s listed in {self.bad_row_log}")
        return out


class ChunkedJob:
    """One command's chunked work; subclasses set the attributes and implement the hooks."""
    noun, verb = "item", "written"
    matrices = ()               # float32 [n, D] columns of a chunk
    strings = ()                # text columns of a chunk

    def __init__(self, output_file, stamp, total, chunk_rows, options, bad_row_log=None, progress=False):
        self.output_file, self.stamp, self.total, self.chunk_rows = output_file, stamp, total, chunk_rows
        self.options = options  # PipelineOptions
        self.bad_row_log = bad_row_log or f"{output_file}.skipped.txt"
        self.progress = progress

    def prepare(self):
        """Before any chunk (the worker pool is already starting): load the model into `self.encoder`."""

    def fill(self, first, stop, writer, policy, counts, progress, pool):
        """Embed items [first, stop) into writer.add(...); bad ones go to `policy`; add the job's own counts to
        `counts`; return (items read, items written)."""
        raise NotImplementedError

    def start_merge(self):
        """Rank 0, before the first chunk is merged: open the outputs (under temporary names)."""

    def merge_chunk(self, arrays):
        """Add one finished chunk's columns (in chunk order) to the outputs."""

    def finish_merge(self, summary):
        """Every chunk merged: check, publish the outputs, fill in the summary's job-specific parts."""

    def abort_merge(self):
        """The merge failed: remove what start_merge opened."""


def run_job(job):
    """Run a ChunkedJob in this process (infer.sharding): load the model, then claim and embed chunks until none is
    left, reusing those an earlier run of the same input, config, weights and engine finished; rank 0 then waits for
    the chunks other processes hold and merges every chunk.  Returns a ChunkSummary."""
    start = time.time()
    rank, world = current_rank()
    summary = ChunkSummary(noun=job.noun, verb=job.verb, output_file=job.output_file, rank=rank, world=world)
    run = None
    try:
        run = _embed_share(job, summary, rank, world)
        if rank == 0:
            if run.claim_merge():
                _merge(job, run, summary)
                run.remove()
            else:
                summary.notes.append("another run of the same job merged the chunks into the output")
    finally:
        if run is not None:
            run.remove_if_empty()
    summary.seconds = time.time() - start
    return summary


def _embed_share(job, summary, rank, world):
    """Load the model, open the work folder and embed the chunks this process claims (rank 0: until every chunk is
    done); returns the ChunkedRun."""
    pool = start_pool(job.options)  # first: the workers start while the model loads here
    progress = None
    try:
        job.prepare()
        # What ran is part of the fingerprint: a resumed run never mixes devices, engines or precisions.
        run = ChunkedRun(job.output_file, fingerprint(job=job.stamp, ran=ran_by(job.encoder)), job.total,
                         job.chunk_rows, rank, world)
        started = run.start()
        if started is None:
            summary.notes.append("rank 0 finished the job before this rank started: nothing left to do")
            return run
        summary.stale_chunks, summary.reused = started
        progress = _progress(job, total=job.total - summary.reused)
        try:
            while True:
                chunk = run.claim_next()
                if chunk is None:
                    if rank != 0 or run.done() == run.count:
                        return run
                    run.wait()  # for chunks other processes hold (claim_next takes over those of dead ones)
                    continue
                _embed_chunk(job, run, chunk, progress, pool)
                run.release()
        except BaseException:
            run.remove_if_empty()
            raise
    finally:
        if progress is not None:
            progress.close()
        pool.terminate()
        pool.join()


def ran_by(encoder):
    """The device, engine and precision an encoder runs (its infer.plan.EnginePlan, or what it says of itself)."""
    plan = getattr(encoder, "plan", None)
    if plan is not None:
        return plan.describe()
    return {"engine": type(encoder).__name__, "precision": getattr(encoder, "precision", None)}


def _embed_chunk(job, run, chunk, progress, pool):
    policy, counts = BadRowPolicy(job.options.on_bad_row), {}

    def fill(writer):
        read, written = job.fill(*run.rows(chunk), writer, policy, counts, progress, pool)
        return {"read": read, "written": written, "counts": counts,
                "skipped": [[b.path, b.line, b.reason] for b in policy.skipped]}
    run.write_chunk(chunk, job.matrices, job.strings, fill)


def _merge(job, run, summary):
    """Rank 0: every chunk, in order, into the job's outputs; the bad rows into one log."""
    remove_stale_temps(job.output_file)
    policy = BadRowPolicy("skip", job.bad_row_log)
    job.start_merge()
    try:
        for chunk in range(run.count):
            arrays, meta = run.load(chunk)
            job.merge_chunk(arrays)
            summary.read += meta["read"]
            summary.written += meta["written"]
            for name, value in meta["counts"].items():
                summary.counts[name] = summary.counts.get(name, 0) + value
            policy.skipped += [BadRow(*bad) for bad in meta["skipped"]]
        job.finish_merge(summary)
        policy.close()
    finally:
        job.abort_merge()
    summary.skipped = dict(policy.reason_counts())
    summary.bad_row_log = policy.log_path if policy.skipped else ""


def _progress(job, total=None):
    from tqdm import tqdm
    return tqdm(total=total, unit=job.noun, desc=f"embedding {job.noun}s", disable=not job.progress,
                dynamic_ncols=True, mininterval=1.0)
