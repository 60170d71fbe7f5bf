"""index duplicates: the groups equal a brute-force grouping (all pairs in float64, connected components), for flat
and approximate indexes; JSON and TSV outputs from the CLI; a threshold outside [-1, 1] is refused."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_index import gallery_npz, unit

from conftest import REPO
from ernievil2.errors import ConfigError
from ernievil2.search.duplicates import duplicate_groups
from ernievil2.search.index import SearchIndex, build_index

pytest.importorskip("faiss", reason="faiss-cpu is not installed")


def planted(n=400, d=32, seed=0):
    """Random unit vectors plus chains of near-copies (a ~ b ~ c: a and c may be further apart than the
    threshold, yet one group) and exact copies."""
    rng = np.random.default_rng(seed)
    vectors = unit(rng.standard_normal((n, d)))
    for base in range(0, 60, 6):
        for step in range(1, 4):
            vectors[base + step] = unit(vectors[base + step - 1][None] + 0.05 * rng.standard_normal((1, d)))[0]
    vectors[n - 1] = vectors[n // 2]
    return vectors


def brute_force_groups(vectors, ids, threshold):
    sims = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    n, seen, groups = len(ids), set(), []
    for start in range(n):
        if start in seen:
            continue
        component, todo = {start}, [start]
        while todo:
            a = todo.pop()
            for b in np.flatnonzero(sims[a] >= threshold):
                if b not in component:
                    component.add(int(b))
                    todo.append(int(b))
        seen |= component
        if len(component) > 1:
            groups.append(sorted(ids[i] for i in component))
    return sorted(groups)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_groups_equal_brute_force(tmp_path, kind):
    vectors = planted()
    path, ids = gallery_npz(tmp_path / "g.npz", vectors, ids=[f"img{(i * 37) % 400:03d}" for i in range(400)])
    build_index(path, tmp_path / kind, kind=kind, log=lambda _: None)
    index = SearchIndex(str(tmp_path / kind))
    for threshold in (0.999999, 0.97, 0.9, 0.5):
        got = duplicate_groups(index, threshold)
        assert [g["ids"] for g in got] == brute_force_groups(vectors, ids, threshold)
        for group in got:
            for a, b, sim in group["pairs"]:
                assert sim >= threshold and a in group["ids"] and b in group["ids"]
    assert any(len(g["ids"]) >= 4 for g in duplicate_groups(index, 0.9))  # chains join into one group
    with pytest.raises(ConfigError, match="between -1 and 1"):
        duplicate_groups(index, 1.5)


def test_cli_json_and_tsv(tmp_path):
    vectors = planted(n=120)
    path, ids = gallery_npz(tmp_path / "g.npz", vectors)
    build_index(path, tmp_path / "index", log=lambda _: None)
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))

    def run(*args):
        return subprocess.run([sys.executable, "-m", "ernievil2", "index", "duplicates", str(tmp_path / "index"),
                               *args], capture_output=True, text=True, env=env, timeout=120)
    out = run("--threshold", "0.9")
    assert out.returncode == 0, out.stderr
    want = brute_force_groups(vectors, ids, 0.9)
    assert [g["ids"] for g in json.loads(out.stdout)["groups"]] == want
    out = run("--threshold", "0.9", "--format", "tsv", "--output", str(tmp_path / "dups.tsv"))
    assert out.returncode == 0 and "group(s) of near-duplicates" in out.stderr
    lines = (tmp_path / "dups.tsv").read_text().splitlines()
    assert lines[0] == "group\tid" and lines[1:] == [f"{n}\t{i}" for n, g in enumerate(want, 1) for i in g]
    out = run("--threshold", "7")
    assert out.returncode == 2 and "between -1 and 1" in out.stderr and "Traceback" not in out.stderr
