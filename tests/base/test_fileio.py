"""Atomic outputs and the clean-up of what killed runs leave behind."""
import os
import subprocess
import sys

import pytest

from ernievil2.fileio import atomic_path, atomic_write, remove_stale_temps, temp_path_for, write_text_atomic


def dead_pid():
    """The PID of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_write_appears_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(str(target), "first\n")
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            with open(tmp, "w") as f:
                f.write("half of the second")
            raise RuntimeError("killed half-way")
    assert target.read_text() == "first\n"  # the old file, untouched
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]  # and no temporary left
    atomic_write(str(target), lambda tmp: open(tmp, "w").write("second\n"))
    assert target.read_text() == "second\n"


def test_stale_temporaries_of_dead_processes_are_removed_and_nothing_else(tmp_path):
    target = str(tmp_path / "emb.out")
    mine = temp_path_for(target)
    dead = mine.replace(f"-{os.getpid()}", f"-{dead_pid()}")
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = mine.replace(f"-{os.getpid()}", f"-{live_proc.pid}")
        other_host = mine.replace(".tmp-", ".tmp-otherhost").replace(f"-{os.getpid()}", f"-{dead_pid()}")
        other_target = temp_path_for(str(tmp_path / "other.out")).replace(f"-{os.getpid()}", f"-{dead_pid()}")
        dead_part = dead + ".text"  # a sidecar part of the same dead run
        os.makedirs(dead + ".dir")  # a staging directory of the same dead run
        for path in (dead, live, other_host, other_target, dead_part, mine, str(tmp_path / "emb.out.keep")):
            open(path, "w").close()
        removed = remove_stale_temps(target)
        assert sorted(removed) == sorted([dead, dead_part, dead + ".dir"])
        left = set(os.listdir(tmp_path))
        assert {os.path.basename(p) for p in (live, other_host, other_target, mine)} <= left
        assert "emb.out.keep" in left and os.path.basename(dead) not in left
    finally:
        live_proc.kill()
        live_proc.wait()


def test_a_star_matches_many_targets(tmp_path):
    stale = [temp_path_for(str(tmp_path / f"step_{k:08d}")).replace(f"-{os.getpid()}", f"-{dead_pid()}")
             for k in (1, 2)]
    for path in stale:
        os.makedirs(path)
    assert sorted(remove_stale_temps(str(tmp_path / "step_*"))) == sorted(stale)
    assert os.listdir(tmp_path) == []


def test_outputs_are_fsynced_before_the_rename_that_publishes_them(tmp_path, monkeypatch):
    import ernievil2.fileio as fileio
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        real_replace(src, dst)
    monkeypatch.setattr(fileio.os, "fsync", fsync)
    monkeypatch.setattr(fileio.os, "replace", replace)
    target = str(tmp_path / "out.txt")
    write_text_atomic(target, "payload\n")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"], events
    assert ".out.txt.tmp-" in events[0][1]                    # the bytes, under the temporary name
    assert events[2][1] == str(tmp_path)                       # then the folder, so that the rename is durable
    assert open(target).read() == "payload\n"


def test_a_million_character_text_is_stored_at_its_own_length(tmp_path):
    """One huge text among short ones: a fixed-width unicode column (numpy '<U') would take rows x 4 bytes x the
    longest text (here 50 x 4 MB = 200 MB) to write, store and read; the compact column costs about the text."""
    import tracemalloc

    import numpy as np

    from ernievil2.fileio import NpzWriter, read_strings
    texts = [f"短文本{i}" for i in range(50)]
    texts[17] = "文" * 1_000_000  # 3 MB of UTF-8
    path = str(tmp_path / "texts.npz")
    tracemalloc.start()
    try:
        writer = NpzWriter(path, matrices=("v",), strings=("texts",))
        for start in range(0, 50, 10):
            writer.add(v=np.zeros((10, 4), np.float32), texts=texts[start:start + 10])
        writer.finish()
        with np.load(path) as z:
            back = read_strings(z, "texts")
            middle = read_strings(z, "texts", 16, 19)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert back == texts and middle == texts[16:19]
    assert peak < 24 * 2 ** 20, f"peak {peak / 2 ** 20:.0f} MB"  # a few copies of 3 MB, far from 200 MB
    assert os.path.getsize(path) < 4 * 2 ** 20


def test_text_columns_of_older_files_still_read(tmp_path):
    import numpy as np

    from ernievil2.fileio import has_strings, read_strings, string_columns
    path = str(tmp_path / "old.npz")
    np.savez(path, ids=np.array(["a", "bé", "文字"]), embeddings=np.zeros((3, 2), np.float32), meta=np.array("{}"))
    with np.load(path) as z:
        assert has_strings(z, "ids") and not has_strings(z, "texts")
        assert string_columns(z) == ["ids"]  # (not a 0-d text such as a provenance record)
        assert read_strings(z, "ids") == ["a", "bé", "文字"] and read_strings(z, "ids", 1) == ["bé", "文字"]


def test_a_crash_between_the_two_renames_of_a_folder_swap_never_leaves_no_folder(tmp_path, monkeypatch):
    import ernievil2.fileio as fileio
    target, stage = tmp_path / "index", tmp_path / "stage"
    for folder, text in ((target, "old"), (stage, "new")):
        folder.mkdir()
        (folder / "v.txt").write_text(text)
    real_replace = os.replace

    def crash_before_the_second_rename(src, dst):
        if str(src) == str(stage):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)  # the two-rename way (no renameat2 there)
    monkeypatch.setattr(fileio.os, "replace", crash_before_the_second_rename)
    with pytest.raises(KeyboardInterrupt):
        fileio.swap_in_folder(str(stage), str(target))
    monkeypatch.undo()
    assert not target.exists()                                  # the moment of the crash: the old folder is aside
    remove_stale_temps(str(target))                             # what a restart does first keeps it
    assert fileio.recover_folder(str(target)) and (target / "v.txt").read_text() == "old"
    fileio.swap_in_folder(str(stage), str(target))
    assert (target / "v.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["index"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_readers_during_a_swap_never_undo_it(tmp_path, monkeypatch, exchange):
    """A reader's recover_folder while another process is between the two renames of a swap must leave the swap
    alone (it once put the old folder back, and the swap's second rename failed: 'Directory not empty')."""
    import ernievil2.fileio as fileio
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    elif not fileio._exchange(str(tmp_path), str(tmp_path)):
        pytest.skip("this system has no renameat2 RENAME_EXCHANGE")
    target, stage = tmp_path / "index", tmp_path / "stage"
    for folder, text in ((target, "old"), (stage, "new")):
        folder.mkdir()
        (folder / "v.txt").write_text(text)
    seen = []
    real_replace = os.replace

    def a_reader_runs_between_the_renames(src, dst):
        if str(src) == str(stage):
            seen.append((fileio.recover_folder(str(target)), target.exists()))
        real_replace(src, dst)
    monkeypatch.setattr(fileio.os, "replace", a_reader_runs_between_the_renames)
    fileio.swap_in_folder(str(stage), str(target))
    assert (target / "v.txt").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["index"]
    assert seen == ([] if exchange else [(False, False)])  # the exchange has no in-between; else the reader waits


def test_a_killed_process_not_yet_reaped_counts_as_gone(tmp_path):
    """A rank killed under a launcher that has not reaped it yet is a zombie: its claims and temporaries are free."""
    import signal
    import time

    from ernievil2.fileio import process_alive
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while process_alive(proc.pid) and time.time() < deadline:  # (not reaped: no wait() before the check)
            time.sleep(0.05)
        assert not process_alive(proc.pid)
    finally:
        proc.kill()
        proc.wait()
