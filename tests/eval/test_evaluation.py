"""eval_retri.py / ernievil2.eval: parsing, the protocol, block-wise exact ranks, output formats, errors.

Oracles: a brute-force full-matrix evaluator written here (with plain Python loops for the ranks), and the
plain re-implementation of the official algorithm in benchmarks/bench_eval.py for pairs mode.
"""
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ernievil2.cli import eval as eval_cli
from ernievil2.errors import EmbeddingFileError
from ernievil2.eval import embedding_files as ef
from ernievil2.eval import metrics as ev
from ernievil2.eval import sidecar, text_format
from ernievil2.fileio import read_strings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_eval", os.path.join(REPO, "benchmarks", "bench_eval.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


# ----------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------

def fmt(vec):
    return " ".join(str(np.float32(x)) for x in vec)  # as run_infer writes: str() of each float32


def write_text(path, text, image, ids):
    with open(path, "w") as f:
        for t, i, k in zip(text, image, ids):
            f.write(f"{fmt(t)}\t{fmt(i)}\t{k}\n")
    return str(path)


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_pairs(rng, n, d, noise=1.0):
    image = unit(rng.standard_normal((n, d)))
    return unit(image + noise * rng.standard_normal((n, d)) / np.sqrt(d)), image


def tied_pairs(rng, n, d):
    """Values in {-2..2}/4: every dot product is exact in float32, so many scores tie exactly and any summation
    order (full matrix or blocks) yields the same bits."""
    def draw():
        return (rng.integers(-2, 3, (n, d)) / 4).astype(np.float32)
    text, image = draw(), draw()
    text[n // 3] = text[n // 3 + 1]  # identical queries
    image[n // 2] = image[n // 2 + 1]  # an image appearing twice in the gallery
    return text, image


def pct(hits, n):
    return float(np.round(np.float64(hits) / n * 100, 2))


def brute_force(text, image, ids, ks=(1, 5, 10), pairs=False):
    """The protocol, spelled out over the full score matrix."""
    n = len(text)
    if pairs:
        gallery, owner = image, list(range(n))
    else:
        order = list(dict.fromkeys(ids))  # distinct ids, first appearance first
        index = {k: j for j, k in enumerate(order)}
        gallery = image[[list(ids).index(k) for k in order]]
        owner = [index[k] for k in ids]
    scores = text @ gallery.T
    m = len(gallery)
    t_rank = []
    for i in range(n):
        mine = scores[i, owner[i]]
        t_rank.append(sum(1 for j in range(m) if j != owner[i] and scores[i, j] > mine))
    i_rank = []
    for j in range(m):
        captions = [i for i in range(n) if owner[i] == j]
        best = max(scores[i, j] for i in captions)
        i_rank.append(sum(1 for i in range(n) if owner[i] != j and scores[i, j] > best))

    def direction(ranks):
        ranks = np.array(ranks)
        rec = [(ranks < k).sum() / float(len(ranks)) for k in ks]
        return rec + [sum(rec) / float(len(rec)), (1.0 / (1.0 + ranks)).sum() / len(ranks)]

    def named(v):
        out = {f"R@{k}": float(np.round(x * 100, 2)) for k, x in zip(ks, v)}
        out["mean_recall"] = float(np.round(v[-2] * 100, 2))
        out["MRR"] = float(np.round(v[-1] * 100, 2))
        return out

    t2i, i2t = direction(t_rank), direction(i_rank)
    return {"text2image": named(t2i), "image2text": named(i2t),
            "mean": named([(a + b) / 2 for a, b in zip(t2i, i2t)]),
            "counts": {"text_queries": n, "image_queries": m}, "protocol": "pairs" if pairs else "grouped",
            "ks": list(ks)}


def run_cli(capsys, *args):
    code = eval_cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ----------------------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------------------

def test_parser_is_bit_identical_to_python_float(tmp_path):
    rng = np.random.default_rng(0)
    mags = 10.0 ** rng.uniform(-44, 4, 6000)  # subnormals to thousands: fixed and scientific notation
    values = (mags * rng.choice([-1, 1], len(mags))).astype(np.float32)
    values[:6] = [0.0, -0.0, 1.0, -1.0, 9.999999, 3.4028235e38]
    tokens = [str(v) for v in values]
    # forms off the fast path: no dot, leading '+' or '.', many digits, upper-case exponent, 3-digit exponent
    tokens[6:16] = ["5", "1e-05", "+0.5", ".25", "-7.", "0.123456789012345678", "1.5E-05", "2.5e+10",
                    "12345.678", "1.0e+20"]
    d = 10
    text = np.array(tokens[: len(tokens) // 2]).reshape(-1, d)
    image = np.array(tokens[len(tokens) // 2:]).reshape(-1, d)
    path = tmp_path / "tokens.txt"
    with open(path, "w") as f:
        for t, i in zip(text, image):
            f.write(" ".join(t) + "\t" + " ".join(i) + "\t7\n")
    expected = np.array([np.float32(float(t)) for t in tokens], dtype=np.float32)
    got_text, got_image, ids = ef.load_embeddings(str(path))
    got = np.concatenate([got_text.reshape(-1), got_image.reshape(-1)])
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
    # str(float32) round-trips: the fast path returns the very floats that were written
    assert np.array_equal(got[16:].view(np.uint32), values[16:].view(np.uint32))
    assert list(ids) == ["7"] * len(text)


def test_text_matches_official_reader(tmp_path):
    rng = np.random.default_rng(1)
    text, image = random_pairs(rng, 23, 16)
    path = write_text(tmp_path / "e.txt", text, image, ["1"] * 23)
    t, i, _ = ef.load_embeddings(path)
    t0, i0 = bench.official_load(path)
    assert np.array_equal(t.view(np.uint32), t0.view(np.uint32))
    assert np.array_equal(i.view(np.uint32), i0.view(np.uint32))


@pytest.mark.parametrize("chunk", [64, 200, 1000, 1 << 20])
def test_chunking_irregular_spacing_crlf_and_repeats(tmp_path, chunk):
    rng = np.random.default_rng(2)
    text, image = random_pairs(rng, 12, 9)
    image[3:6] = image[2]  # consecutive repeats: copied, not parsed
    image[7] = image[6][::-1]  # same length, other bytes: must be parsed
    ids = [f"img{i // 2}" for i in range(12)]
    lines = [f"{fmt(t)}\t{fmt(i)}\t{k}" for t, i, k in zip(text, image, ids)]
    lines[1] = lines[1].replace(" ", "  ", 3)  # doubled separators
    lines[4] = " " + lines[4].replace("\t", " \t", 1)  # leading and trailing spaces in a column
    path = tmp_path / "messy.txt"
    path.write_bytes(("\r\n".join(lines)).encode())  # CRLF, and no newline after the last line
    reader = text_format._TextReader(str(path), 9).read(chunk=chunk)  # 64 bytes: lines outgrow the buffer at first
    got_text, got_image, got_ids = reader.result()
    assert np.array_equal(got_text, text) and np.array_equal(got_image, image)
    assert list(got_ids) == ids


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the parallel reader forks")
def test_parallel_ranges_match_serial_and_number_lines_absolutely(tmp_path, monkeypatch):
    monkeypatch.setattr(text_format, "_PARALLEL_BYTES", 0)
    monkeypatch.setattr(text_format, "_can_fork", lambda: True)
    rng = np.random.default_rng(13)
    text, image = random_pairs(rng, 50, 7)
    ids = [f"p{i // 3}" for i in range(50)]
    path = write_text(tmp_path / "par.txt", text, image, ids)
    serial = text_format.load_text(path, workers=1)
    for workers in (2, 3, 7):
        got = text_format.load_text(path, workers=workers)
        assert np.array_equal(got[0], serial[0]) and np.array_equal(got[1], serial[1])
        assert list(got[2]) == ids
    lines = open(path).read().splitlines()
    lines[44] = _set_value(lines[44], 0, 3, "inf")  # in the last of three ranges
    (tmp_path / "late.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(EmbeddingFileError, match=r"late\.txt:45: text embedding contains NaN"):
        text_format.load_text(str(tmp_path / "late.txt"), workers=3)
    lines[30] = lines[30] + "\textra"  # an earlier error in the middle range wins
    (tmp_path / "two.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(EmbeddingFileError, match=r"two\.txt:31: 4 tab-separated"):
        text_format.load_text(str(tmp_path / "two.txt"), workers=3)


def test_both_formats_give_identical_arrays_and_numbers(tmp_path, capsys):
    rng = np.random.default_rng(3)
    text, image = random_pairs(rng, 30, 12)
    ids = [f"im{i % 10}" for i in range(30)]
    image = image[[i % 10 for i in range(30)]]  # a repeated image repeats its embedding
    txt = write_text(tmp_path / "emb.txt", text, image, ids)
    npz = sidecar.save_sidecar(str(tmp_path / "emb.npz"), text, image, ids)
    a, b = ef.load_embeddings(txt), ef.load_embeddings(npz)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    outputs = [run_cli(capsys, p, *flags) for p in (txt, npz) for flags in ((), ("--json",))]
    assert outputs[0] == outputs[2] and outputs[1] == outputs[3]
    assert json.loads(outputs[1][1])["protocol"] == "grouped"


def test_verified_sidecar_is_read_instead_of_the_text_and_gives_the_same_numbers(tmp_path, capsys, monkeypatch):
    rng = np.random.default_rng(5)
    text, image = random_pairs(rng, 40, 16)
    ids = [f"im{i % 8}" for i in range(40)]
    image = image[[i % 8 for i in range(40)]]
    txt = write_text(tmp_path / "emb.out", text, image, ids)
    parsed = run_cli(capsys, txt, "--json")
    npz = sidecar.save_sidecar(str(tmp_path / "emb.npz"), text, image, ids, text_file=txt)
    assert sidecar.matching_sidecar(txt) == npz

    def no_parsing(*args, **kwargs):
        raise AssertionError("the text file was parsed although a verified sidecar is beside it")

    monkeypatch.setattr(ef, "load_text", no_parsing)
    code, out, err = run_cli(capsys, txt, "--json")
    assert code == 0 and out == parsed[1]
    assert "emb.npz" in err and "CRC-32" in err
    monkeypatch.undo()
    code, out, err = run_cli(capsys, txt, "--json", "--no-sidecar")
    assert code == 0 and out == parsed[1] and err == ""


def test_stale_or_foreign_sidecar_is_never_used(tmp_path):
    rng = np.random.default_rng(6)
    text, image = random_pairs(rng, 10, 8)
    ids = [str(i) for i in range(10)]
    txt = write_text(tmp_path / "emb.txt", text, image, ids)
    side = str(tmp_path / "emb.npz")
    sidecar.save_sidecar(side, text, image, ids)  # no recorded check: not a certified copy
    assert sidecar.matching_sidecar(txt) is None
    sidecar.save_sidecar(side, text, image, ids, text_file=txt)
    assert sidecar.matching_sidecar(txt) == side
    data = open(txt, "rb").read()
    i = data.index(b"1", 10)  # same size, one digit different
    open(txt, "wb").write(data[:i] + b"2" + data[i + 1:])
    assert sidecar.matching_sidecar(txt) is None
    open(txt, "wb").write(data + data[:data.index(b"\n") + 1])  # a line appended
    assert sidecar.matching_sidecar(txt) is None
    open(txt, "wb").write(data)
    assert sidecar.matching_sidecar(txt) == side
    open(side, "wb").write(b"PK garbage")  # unreadable: ignored, the text is parsed
    assert sidecar.matching_sidecar(txt) is None
    assert np.array_equal(ef.load_embeddings(txt)[0], text)


def test_format_is_detected_by_content_not_name(tmp_path):
    rng = np.random.default_rng(4)
    text, image = random_pairs(rng, 5, 4)
    disguised = sidecar.save_sidecar(str(tmp_path / "sidecar.txt"), text, image, list("abcde"))
    plain = write_text(tmp_path / "plain.npz", text, image, list("abcde"))
    for path in (disguised, plain):
        t, i, ids = ef.load_embeddings(path)
        assert np.array_equal(t, text) and list(ids) == list("abcde")


def test_save_sidecar_is_atomic_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.npz"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        sidecar.save_sidecar(str(target), np.zeros((3, 4)), np.zeros((2, 4)), ["a", "b", "c"])
    assert target.read_bytes() == b"old"  # the failed write did not touch it
    sidecar.save_sidecar(str(target), np.ones((2, 4)), np.ones((2, 4)), [1, 2])
    assert os.listdir(tmp_path) == ["out.npz"]
    with np.load(target) as z:
        assert z["text"].dtype == np.float32 and read_strings(z, "image_ids") == ["1", "2"]


# ----------------------------------------------------------------------------------------------------------
# metrics: brute force and the official algorithm as oracles
# ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("block_size", [1, 2, 5, None])
def test_one_to_one_matches_brute_force(block_size):
    rng = np.random.default_rng(5)
    text, image = random_pairs(rng, 40, 16, noise=3.0)
    got = ev.retrieval_metrics(text, image, None, ks=(1, 3, 10), block_size=block_size)
    assert got == brute_force(text, image, None, ks=(1, 3, 10), pairs=True)
    assert 0 < got["text2image"]["R@1"] < 100  # neither trivial nor hopeless, so a wrong rank would show


@pytest.mark.parametrize("block_size", [1, 3, 4, 100])
def test_multi_caption_matches_brute_force(block_size):
    rng = np.random.default_rng(6)
    n_images = 9
    image = unit(rng.standard_normal((n_images, 16)))
    owner = np.concatenate([np.full(c, j) for j, c in enumerate([5, 1, 3, 5, 2, 5, 4, 1, 5])])
    rng.shuffle(owner)  # captions of one image scattered through the file
    text = unit(image[owner] + 3.0 * rng.standard_normal((len(owner), 16)) / 4)
    ids = [f"photo_{j}" for j in owner]
    got = ev.retrieval_metrics(text, image[owner], ids, block_size=block_size)
    want = brute_force(text, image[owner], ids)
    assert got == want
    assert got["counts"] == {"text_queries": len(owner), "image_queries": n_images}
    assert 0 < got["image2text"]["R@1"] < 100


@pytest.mark.parametrize("block_size", [1, 4, None])
def test_ties_follow_the_documented_rule(block_size):
    rng = np.random.default_rng(7)
    text, image = tied_pairs(rng, 36, 6)
    scores = text @ image.T
    assert (scores == np.diag(scores)[:, None]).sum() > 36 + 36  # plenty of exact ties with the correct item
    got = ev.retrieval_metrics(text, image, pairs=True, block_size=block_size)
    assert got == brute_force(text, image, None, pairs=True)
    ids = [f"g{i % 12}" for i in range(36)]
    grouped_image = image[[i % 12 for i in range(36)]]
    assert ev.retrieval_metrics(text, grouped_image, ids, block_size=block_size) == \
        brute_force(text, grouped_image, ids)


def test_a_tie_does_not_count_against_the_correct_item():
    both = np.array([[1, 0], [1, 0], [0, 1]], np.float32)  # rows 0 and 1: the wrong twin scores exactly the same
    got = ev.retrieval_metrics(both, both, pairs=True)
    for key in ("text2image", "image2text"):
        assert got[key]["R@1"] == 100.0 and got[key]["MRR"] == 100.0  # pessimistic ties would give 66.67


@pytest.mark.parametrize("maker", ["random", "tied"])
def test_pairs_table_equals_the_official_algorithm(tmp_path, capsys, maker):
    rng = np.random.default_rng(8)
    text, image = random_pairs(rng, 50, 8, noise=2.5) if maker == "random" else tied_pairs(rng, 50, 8)
    path = write_text(tmp_path / "official.txt", text, image, ["1"] * 50)
    code, out, err = run_cli(capsys, path)
    assert code == 0 and err == ""
    assert out.rstrip("\n") == bench.official_eval(path)
    assert run_cli(capsys, path, "--block-size", "3")[1] == out  # blocks of 3 rows: 17 diagonal tiles
    # the same rows with real ids but --pairs: the official protocol again
    path2 = write_text(tmp_path / "ids.txt", text, image, [f"x{i % 7}" for i in range(50)])
    assert run_cli(capsys, path2, "--pairs")[1] == out


def test_grouped_protocol_stops_penalising_repeated_images():
    rng = np.random.default_rng(9)
    image = unit(rng.standard_normal((6, 32)))
    owner = np.repeat(np.arange(6), 5)
    text = unit(image[owner] + 0.5 * rng.standard_normal((30, 32)) / np.sqrt(32))  # easy: always right image
    ids = [str(j + 10) for j in owner]
    grouped = ev.retrieval_metrics(text, image[owner], ids)
    pairs = ev.retrieval_metrics(text, image[owner], ids, pairs=True)
    assert grouped["text2image"]["R@1"] == 100.0 and grouped["image2text"]["R@1"] == 100.0
    assert pairs["image2text"]["R@1"] < 100.0  # four other captions of the same image outrank the "own" one
    assert pairs["counts"]["image_queries"] == 30 and grouped["counts"]["image_queries"] == 6


def test_official_constant_ids_mean_pairs():
    rng = np.random.default_rng(10)
    text, image = random_pairs(rng, 8, 4)
    assert ev.retrieval_metrics(text, image, ["1"] * 8)["protocol"] == "pairs"
    assert ev.retrieval_metrics(text, image, ["1"] * 7 + ["2"])["protocol"] == "grouped"


# ----------------------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------------------

def test_table_layout(tmp_path, capsys):
    eye = np.eye(4, dtype=np.float32)
    path = write_text(tmp_path / "eye.txt", eye, eye, ["1"] * 4)
    code, out, _ = run_cli(capsys, path)
    assert out == ("| Name       |    R@1 |    R@5 |   R@10 |   meanRecall |\n"
                   "|------------|--------|--------|--------|--------------|\n"
                   "| Text2Image | 100.00 | 100.00 | 100.00 |       100.00 |\n"
                   "| Image2Text | 100.00 | 100.00 | 100.00 |       100.00 |\n"
                   "| MeanRecall | 100.00 | 100.00 | 100.00 |       100.00 |\n")
    try:
        from tabulate import tabulate
    except ImportError:
        return
    rows = [[name] + [100.0] * 4 for name in ("Text2Image", "Image2Text", "MeanRecall")]
    assert out.rstrip("\n") == tabulate(rows, headers=["Name", "R@1", "R@5", "R@10", "meanRecall"],
                                        tablefmt="github", floatfmt=".2f")


def test_json_shape(tmp_path, capsys):
    rng = np.random.default_rng(11)
    text, image = random_pairs(rng, 20, 8, noise=3.0)
    path = write_text(tmp_path / "j.txt", text, image, [f"i{k // 2}" for k in range(20)])
    code, out, _ = run_cli(capsys, path, "--json", "--ks", "1,2,4")
    data = json.loads(out)
    assert code == 0
    assert set(data) == {"text2image", "image2text", "mean", "counts", "protocol", "ks"}
    for key in ("text2image", "image2text", "mean"):
        assert list(data[key]) == ["R@1", "R@2", "R@4", "mean_recall", "MRR"]
        assert all(isinstance(v, float) and 0 <= v <= 100 for v in data[key].values())
    assert data["counts"] == {"text_queries": 20, "image_queries": 10}
    assert data["ks"] == [1, 2, 4] and data["protocol"] == "grouped"
    t, i = data["text2image"], data["image2text"]
    assert data["mean"]["R@2"] == pytest.approx((t["R@2"] + i["R@2"]) / 2, abs=0.011)
    table = run_cli(capsys, path, "--ks", "1,2,4")[1]
    assert table.splitlines()[2].split("|")[2].strip() == f"{t['R@1']:.2f}"  # JSON and table agree


# ----------------------------------------------------------------------------------------------------------
# errors: one line on stderr naming the file and line, exit status 2
# ----------------------------------------------------------------------------------------------------------

def _rows(n=4, d=3):
    rng = np.random.default_rng(12)
    text, image = random_pairs(rng, n, d)
    return [f"{fmt(t)}\t{fmt(i)}\tid{k}" for k, (t, i) in enumerate(zip(text, image))]


def _set_value(line, column, index, token):
    cols = line.split("\t")
    values = cols[column].split(" ")
    values[index] = token
    cols[column] = " ".join(values)
    return "\t".join(cols)


def _broken(kind):
    lines = _rows()
    if kind == "columns":
        lines[2] = lines[2].rsplit("\t", 1)[0]
    elif kind == "text_dim":
        lines[1] = lines[1].split(" ", 1)[1]
    elif kind == "first_line_dims":
        lines[0] = lines[0].replace("\t", " 0.5\t", 1)
    elif kind == "image_dim":
        lines[3] = lines[3].replace("\t", "\t0.1 ", 1)
    elif kind == "nan":
        lines[3] = _set_value(lines[3], 1, 0, "nan")
    elif kind == "inf":
        lines[1] = _set_value(lines[1], 0, 0, "-inf")
    elif kind == "not_a_number":
        lines[1] = _set_value(lines[1], 1, 2, "0.1x")
    elif kind == "empty_line":
        lines.insert(2, "")
    elif kind == "empty_id":
        lines[2] = lines[2].rsplit("\t", 1)[0] + "\t "
    elif kind == "empty":
        return ""
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("kind, where, words", [
    ("columns", ":3:", "2 tab-separated column"),
    ("text_dim", ":2:", "text embedding has 2 values, expected 3"),
    ("first_line_dims", ":1:", "different dimensions: text has 4 values, image 3"),
    ("image_dim", ":4:", "image embedding has 4 values, expected 3"),
    ("nan", ":4:", "image embedding contains NaN or infinity"),
    ("inf", ":2:", "text embedding contains NaN or infinity"),
    ("not_a_number", ":2:", "image embedding value 3 is not a number: '0.1x'"),
    ("empty_line", ":3:", "empty line"),
    ("empty_id", ":3:", "empty image id"),
    ("empty", "", "empty file"),
])
def test_text_errors_name_the_line(tmp_path, capsys, kind, where, words):
    path = tmp_path / f"{kind}.txt"
    path.write_text(_broken(kind))
    code, out, err = run_cli(capsys, path)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{path}{where}" in err and words in err, err


def test_error_line_numbers_survive_chunking(tmp_path, monkeypatch):
    lines = _rows(40, 5)
    lines[33] = _set_value(lines[33], 1, 1, "nan")
    path = tmp_path / "late.txt"
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(text_format, "_READ_CHUNK", 256)
    with pytest.raises(EmbeddingFileError, match=r"late\.txt:34: image embedding contains NaN"):
        ef.load_embeddings(str(path))


def test_sidecar_errors(tmp_path, capsys):
    good = np.ones((3, 4), np.float32)
    bad = good.copy()
    bad[1, 2] = np.nan
    cases = {"missing.npz": dict(text=good, image=good),
             "nan.npz": dict(text=good, image=bad, image_ids=np.array(["a", "b", "c"])),
             "dims.npz": dict(text=good, image=np.ones((3, 5), np.float32), image_ids=np.array(["a", "b", "c"])),
             "empty.npz": dict(text=np.zeros((0, 4), np.float32), image=np.zeros((0, 4), np.float32),
                               image_ids=np.array([], "U1"))}
    expected = {"missing.npz": "lacks array(s) image_ids", "nan.npz": "row 2: image embedding contains NaN",
                "dims.npz": "embeddings of different dimensions", "empty.npz": "empty sidecar"}
    for name, arrays in cases.items():
        np.savez(tmp_path / name, **arrays)
        code, _, err = run_cli(capsys, tmp_path / name)
        assert code == 2 and err.count("\n") == 1 and expected[name] in err, err
    code, _, err = run_cli(capsys, tmp_path / "nowhere.txt")
    assert code == 2 and "cannot read" in err


def test_library_rejects_bad_arrays():
    ok = np.eye(3, dtype=np.float32)
    with pytest.raises(ValueError, match="same shape"):
        ev.retrieval_metrics(ok, np.eye(3, 4, dtype=np.float32))
    with pytest.raises(ValueError, match="NaN"):
        ev.retrieval_metrics(ok, np.where(ok == 1, np.nan, ok))
    with pytest.raises(ValueError, match="ks"):
        ev.retrieval_metrics(ok, ok, ks=(0, 5))
    with pytest.raises(ValueError, match="image ids"):
        ev.retrieval_metrics(ok, ok, ["a", "b"])


def test_cli_subprocess_is_light_and_reports_errors(tmp_path):
    """The real entry point: no Paddle import, one-line error with status 2."""
    eye = np.eye(3, dtype=np.float32)
    path = write_text(tmp_path / "e.txt", eye, eye, ["1"] * 3)
    script = os.path.join(REPO, "eval_retri.py")
    probe = ("import runpy, sys\ncode = None\nsys.argv = [%r, sys.argv[1]]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "except SystemExit as e:\n    code = e.code\n"
             "print('paddle' in sys.modules, code)\n") % script
    done = subprocess.run([sys.executable, "-c", probe, path], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == "False 0", done.stdout + done.stderr
    (tmp_path / "bad.txt").write_text("1.0 2.0\t1.0\t1\n")
    done = subprocess.run([sys.executable, os.path.join(REPO, "eval_retri.py"), str(tmp_path / "bad.txt")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("eval_retri.py: error: ") and done.stderr.count("\n") == 1


def test_folds_average_each_part_ranked_on_its_own(capsys, tmp_path):
    """--folds N: each N-th of the gallery (order of first appearance) with its own captions is ranked alone,
    and the fractions are averaged -- checked against the brute-force protocol run on each part by hand."""
    rng = np.random.default_rng(11)
    n_images, folds = 12, 3
    image = unit(rng.standard_normal((n_images, 8)))
    owner = np.concatenate([np.full(c, j) for j, c in enumerate([2, 1, 3, 2, 1, 2, 3, 1, 2, 2, 1, 3])])
    text = unit(image[owner] + 1.2 * rng.standard_normal((len(owner), 8)) / np.sqrt(8))
    ids = [f"im{j}" for j in owner]
    got = ev.retrieval_metrics(text, image[owner], ids, ks=(1, 2), folds=folds)
    parts = []
    for f in range(folds):
        rows = [i for i, j in enumerate(owner) if f * 4 <= j < (f + 1) * 4]
        parts.append(ev.retrieval_metrics(text[rows], image[owner][rows], [ids[i] for i in rows], ks=(1, 2),
                                          block_size=2))
        assert parts[-1] == brute_force(text[rows], image[owner][rows], [ids[i] for i in rows], ks=(1, 2))
    for direction in ("text2image", "image2text"):
        for key in ("R@1", "R@2"):
            # per-part values are rounded to 2 places; their mean is within 0.005 of the unrounded mean
            mean = sum(p[direction][key] for p in parts) / folds
            assert abs(got[direction][key] - mean) <= 0.005 + 1e-9, (direction, key)
    assert got["counts"] == {"text_queries": len(owner), "image_queries": n_images, "folds": folds}
    # on the whole gallery the task is harder: some query must rank lower than within its part
    whole = ev.retrieval_metrics(text, image[owner], ids, ks=(1, 2))
    assert whole["text2image"]["R@1"] <= got["text2image"]["R@1"]
    with pytest.raises(ValueError, match="folds must be a positive divisor of the 12"):
        ev.retrieval_metrics(text, image[owner], ids, folds=5)
    path = tmp_path / "emb.out"
    write_text(path, text, image[owner], ids)
    code, out, err = run_cli(capsys, path, "--folds", "5")
    assert code == 2 and "folds must be a positive divisor" in err
