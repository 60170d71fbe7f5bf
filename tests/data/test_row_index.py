"""The row index: a vectorised scan equal to reading line by line (blank lines, CRLF, no final newline, block
boundaries), line numbers for messages, a cache of memory-mapped offsets, and shards read as one sequence."""
import os
import pickle
import random

import numpy as np
import pytest

import ernievil2.data.row_index as row_index
from ernievil2.data.row_index import RowIndex, scan_rows


def reference(data):
    """(offsets, blank_next) by reading line by line, as the TSV reader counts rows."""
    offsets, blank_next, rows, position = [], [], 0, 0
    for line in data.splitlines(keepends=True) if b"\n" in data else ([data] if data else []):
        if line.strip():
            offsets.append(position)
            rows += 1
        else:
            blank_next.append(rows)
        position += len(line)
    return offsets, blank_next


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ERNIEVIL2_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_scan_equals_reading_line_by_line_across_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(row_index, "SCAN_BLOCK", 7)  # every line crosses a block boundary somewhere
    rng = random.Random(0)
    pieces = [b"", b" ", b"\t", b"ab", b"x y", b" \r", "中文".encode(), b"a\tb\tc", b" z", b"\r"]
    for _ in range(800):
        data = b"\n".join(rng.choice(pieces) for _ in range(rng.randint(0, 9)))
        data += b"\n" if rng.random() < 0.5 else b""
        path = tmp_path / "f.tsv"
        path.write_bytes(data)
        offsets, blank_next = scan_rows(str(path))
        assert (list(offsets), list(blank_next)) == reference(data), data


def test_line_numbers_and_reads_skip_blank_lines(tmp_path, cache):
    path = tmp_path / "rows.tsv"
    path.write_bytes(b"\n  \na\t1\r\n\nb\t2\n \t\nc\t3")
    index = RowIndex(str(path))
    assert len(index) == 3
    assert [index.read(i) for i in range(3)] == [(str(path), 3, b"a\t1"), (str(path), 5, b"b\t2"),
                                                 (str(path), 7, b"c\t3")]


def test_offsets_are_cached_memory_mapped_and_refreshed_when_the_file_changes(tmp_path, cache, monkeypatch):
    path = tmp_path / "rows.tsv"
    path.write_bytes(b"".join(f"row {i}\n".encode() for i in range(1000)))
    first = RowIndex(str(path))
    assert isinstance(first.shards[0].offsets, np.memmap) and os.listdir(cache)
    monkeypatch.setattr(row_index, "scan_rows", lambda p: pytest.fail("a cached file must not be scanned again"))
    again = RowIndex(str(path))
    assert again.read(999)[2] == b"row 999"
    monkeypatch.undo()
    path.write_bytes(b"other\n" * 3)  # new size and time: a new scan
    os.utime(path, ns=(1, 1))
    assert len(RowIndex(str(path))) == 3
    # a worker process receives the path, not the offsets
    assert len(pickle.dumps(first.shards[0])) < 300


def test_ranks_share_the_first_scan_and_then_only_map_the_offsets(tmp_path, cache, monkeypatch):
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(5):
        (shards / f"part{k}.tsv").write_bytes(b"".join(f"{k} {i}\n".encode() for i in range(10 + k)))
    scanned = []
    scan = row_index.scan_rows
    monkeypatch.setattr(row_index, "scan_rows", lambda p: scanned.append(os.path.basename(p)) or scan(p))
    row_index.prepare_row_index(str(shards), part=1, parts=2)
    assert scanned == ["part1.tsv", "part3.tsv"]
    row_index.prepare_row_index(str(shards), part=0, parts=2)
    assert sorted(scanned) == [f"part{k}.tsv" for k in range(5)]  # each file scanned by one of the two
    index = RowIndex(str(shards))
    assert len(scanned) == 5 and list(index.counts) == [10, 11, 12, 13, 14]
    assert index.read(len(index) - 1)[2] == b"4 13"


def test_shards_read_as_one_sequence(tmp_path, cache):
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "a.tsv").write_bytes(b"a0\na1\n")
    (shards / "b.tsv").write_bytes(b"\nb0\n")
    (shards / "c.tsv").write_bytes(b"c0\nc1\nc2")
    index = RowIndex(str(shards))
    assert list(index.counts) == [2, 1, 3] and len(index) == 6
    assert [index.read(i)[2] for i in range(6)] == [b"a0", b"a1", b"b0", b"c0", b"c1", b"c2"]
    assert index.location(2) == (str(shards / "b.tsv"), 2)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_worker_does_not_share_the_parents_file_position(tmp_path, cache):
    # Data-loader workers are forked from a process that may already have read rows: they must not seek the
    # parent's file handle (the two would read each other's rows).
    path = tmp_path / "rows.tsv"
    # rows of 1 KB, so that row 40 lies beyond what the parent's buffered reader holds and the child must seek
    path.write_bytes(b"".join(b"row %d %s\n" % (i, b"x" * 1000) for i in range(50)))
    index = RowIndex(str(path))
    assert index.read(0)[2].startswith(b"row 0 ")
    handle = index._handles[str(path)]
    position = os.lseek(handle.fileno(), 0, os.SEEK_CUR)
    pid = os.fork()
    if pid == 0:  # child: read far away, then leave without running the parent's cleanup
        os._exit(0 if index.read(40)[2].startswith(b"row 40 ") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert os.lseek(handle.fileno(), 0, os.SEEK_CUR) == position
    assert index.read(1)[2].startswith(b"row 1 ")
