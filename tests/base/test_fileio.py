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
