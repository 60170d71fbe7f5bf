"""The order in which training rows are visited, with memory independent of the number of rows.

Epoch e shuffles the shard order (seeded by (seed, e)); consecutive groups of `window` shards are then shuffled
row by row (a numpy permutation for windows of up to MATERIALISED_ROWS rows, beyond that a keyed bijection
computed per position and never materialised), so reading stays within a few files at a time.  Global batches
are consecutive runs of that order; rank r takes its slice of each, so the batches do not depend on the number
of ranks, and batch g can be found directly (exact resume).
"""
import numpy as np
import paddle

from ..errors import ConfigError

_ROUNDS = 4
# Windows up to this many rows are permuted with a materialised numpy permutation (at most 32 MB of int64);
# larger ones with KeyedPermutation, which needs no memory per row.
MATERIALISED_ROWS = 1 << 22


class KeyedPermutation:
    """A bijection of [0, n) chosen by a key: rounds of (odd multiply, add, xor-shift) on the smallest
    power-of-two domain covering n, cycle-walked back into [0, n).  Vectorised over arrays of positions."""

    def __init__(self, n, key):
        self.n = int(n)
        self.bits = max(1, (self.n - 1).bit_length())
        self.mask = np.uint64((1 << self.bits) - 1)
        rng = np.random.default_rng(key)
        self.mult = rng.integers(0, 1 << 62, _ROUNDS, dtype=np.uint64) | np.uint64(1)
        self.add = rng.integers(0, 1 << 62, _ROUNDS, dtype=np.uint64)
        self.shift = np.uint64(max(1, self.bits // 2))

    def _round_trip(self, x):
        for k in range(_ROUNDS):
            x = (x * self.mult[k] + self.add[k]) & self.mask
            x ^= x >> self.shift
        return x

    def __call__(self, positions):
        x = self._round_trip(np.asarray(positions, np.uint64))
        outside = x >= self.n
        while outside.any():  # cycle walking: at most a few steps, since the domain is < 2n
            x[outside] = self._round_trip(x[outside])
            outside = x >= self.n
        return x.astype(np.int64)


class EpochOrder:
    """Global row numbers of positions within an epoch (see the module docstring)."""

    def __init__(self, counts, seed, shuffle=True, window=8):
        self.counts = np.asarray(counts, np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.counts)))
        self.total = int(self.starts[-1])
        self.seed, self.shuffle, self.window = seed, shuffle, max(1, int(window))
        self._epoch = None

    def _prepare(self, epoch):
        if self._epoch == epoch:
            return
        shards = (np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(len(self.counts))
                  if self.shuffle else np.arange(len(self.counts)))
        # A window's rows are numbered in file order (its shards sorted), so a window holding every shard orders
        # rows exactly as the same rows in one file would be ordered.
        self.windows = [np.sort(shards[i:i + self.window]) for i in range(0, len(shards), self.window)]
        sizes = [int(self.counts[w].sum()) for w in self.windows]
        self.window_starts = np.concatenate(([0], np.cumsum(sizes)))
        self.permutations = [self._permutation(epoch, k, size) if self.shuffle and size else None
                             for k, size in enumerate(sizes)]
        self._epoch = epoch

    def _permutation(self, epoch, window, size):
        if size > MATERIALISED_ROWS:
            return KeyedPermutation(size, [self.seed, epoch, window, 0xF00D])
        # One window over all rows keeps the key of the earlier global shuffle, so its runs replay the same order.
        key = [self.seed, epoch, 0x5EED] if len(self.windows) == 1 else [self.seed, epoch, window, 0xF00D]
        order = np.random.default_rng(key).permutation(size)
        return lambda positions: order[positions]

    def rows(self, epoch, positions):
        """Global row numbers for positions (int array, each < total) of epoch `epoch`."""
        self._prepare(epoch)
        positions = np.asarray(positions, np.int64)
        out = np.empty(len(positions), np.int64)
        which = np.searchsorted(self.window_starts, positions, side="right") - 1
        for k in np.unique(which):
            chosen = which == k
            local = positions[chosen] - self.window_starts[k]
            if self.permutations[k] is not None:
                local = self.permutations[k](local)
            shards = self.windows[k]
            inner = np.concatenate(([0], np.cumsum(self.counts[shards])))
            slot = np.searchsorted(inner, local, side="right") - 1
            out[chosen] = self.starts[shards[slot]] + (local - inner[slot])
        return out


class GlobalBatchSampler(paddle.io.BatchSampler):
    """Yields this rank's slice of each global batch as [(epoch, row), ...], from a start batch onward.

    Global batch g of an epoch is positions [g * B * W, (g + 1) * B * W) of that epoch's order (the remainder
    of an epoch is dropped); rank r takes positions [r * B, (r + 1) * B) of it."""

    def __init__(self, counts, batch_size, world_size=1, rank=0, seed=0, shuffle=True, start_batch=0, window=8):
        self.order = EpochOrder(counts, seed, shuffle, window)
        self.batch_size, self.world_size, self.rank = batch_size, world_size, rank
        self.global_batch = batch_size * world_size
        self.batches_per_epoch = self.order.total // self.global_batch
        if self.batches_per_epoch == 0:
            raise ConfigError(f"the training set has {self.order.total} rows, fewer than one global batch "
                              f"({batch_size} per rank x {world_size} ranks = {self.global_batch})")
        self.start_batch = start_batch

    def batch_rows(self, g):
        """(epoch, global row numbers) of this rank's slice of global batch g."""
        epoch, b = divmod(g, self.batches_per_epoch)
        first = b * self.global_batch + self.rank * self.batch_size
        return epoch, self.order.rows(epoch, np.arange(first, first + self.batch_size))

    def __iter__(self):
        g = self.start_batch
        while True:
            epoch, rows = self.batch_rows(g)
            yield [(epoch, int(i)) for i in rows]
            g += 1

    def __len__(self):
        return 1 << 40  # endless: the trainer stops by step count
