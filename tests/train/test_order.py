"""The training order: a keyed bijection per window, the same batches for any number of ranks and from any start
(exact resume), one file and its shards ordered alike, and no per-row memory."""
import tracemalloc

import numpy as np
import pytest

from ernievil2.train.order import EpochOrder, GlobalBatchSampler, KeyedPermutation


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000, 4097])
def test_keyed_permutation_is_a_bijection_that_depends_on_the_key(n):
    a = KeyedPermutation(n, [1, 2])(np.arange(n))
    assert sorted(a.tolist()) == list(range(n))
    if n > 16:
        b = KeyedPermutation(n, [1, 3])(np.arange(n))
        assert (a != b).mean() > 0.5 and abs(np.corrcoef(np.arange(n), a)[0, 1]) < 0.2


def test_every_row_once_per_epoch_and_epochs_differ():
    order = EpochOrder([5, 0, 7, 3, 9], seed=4, window=2)
    first, second = order.rows(0, np.arange(24)), order.rows(1, np.arange(24))
    assert sorted(first.tolist()) == list(range(24)) and sorted(second.tolist()) == list(range(24))
    assert first.tolist() != second.tolist()
    assert EpochOrder([5, 0, 7, 3, 9], seed=4, shuffle=False).rows(0, np.arange(24)).tolist() == list(range(24))


def test_windows_keep_reading_within_few_shards():
    counts = [10] * 6
    order = EpochOrder(counts, seed=1, window=2)
    rows = order.rows(0, np.arange(60))
    shard_of = rows // 10
    for start in range(0, 60, 20):  # each window of 2 shards is read out before the next begins
        assert len(set(shard_of[start:start + 20].tolist())) == 2


def test_one_file_and_its_shards_give_the_same_batches():
    one = GlobalBatchSampler([23], batch_size=4, seed=9, window=8)
    shards = GlobalBatchSampler([8, 7, 8], batch_size=4, seed=9, window=8)  # the same 23 rows, split
    for g in range(12):  # more than an epoch (5 batches each)
        assert one.batch_rows(g)[1].tolist() == shards.batch_rows(g)[1].tolist()


def test_ranks_split_the_global_batch_and_resume_starts_at_any_batch():
    counts = [13, 8, 21]
    whole = GlobalBatchSampler(counts, batch_size=6, world_size=1, seed=2, window=2)
    halves = [GlobalBatchSampler(counts, batch_size=3, world_size=2, rank=r, seed=2, window=2) for r in (0, 1)]
    for g in range(9):
        joined = np.concatenate([h.batch_rows(g)[1] for h in halves])
        assert whole.batch_rows(g)[1].tolist() == joined.tolist()
    resumed = GlobalBatchSampler(counts, batch_size=6, seed=2, window=2, start_batch=5)
    it = iter(resumed)
    assert [row for _, row in next(it)] == whole.batch_rows(5)[1].tolist()


def test_no_memory_per_row_at_a_billion_and_a_half_rows():
    tracemalloc.start()
    sampler = GlobalBatchSampler([7_500_000] * 200, batch_size=256, world_size=64, rank=17, seed=0)
    epoch, rows = sampler.batch_rows(123_456)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(rows) == 256 and rows.max() < 1_500_000_000
    assert peak < 2 << 20  # under 2 MB: per-shard numbers only
