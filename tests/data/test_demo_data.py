"""The synthetic demo data: determinism, split layout, TSV/JPEG validity, captions and pixels that agree with
the scene description, and a vocabulary that covers every caption and tag."""
import base64
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ernievil2.cli.build_vocab import main as build_vocab_main
from ernievil2.data import demo as demo_data
from ernievil2.data.demo import (
    COLOURS,
    REGIONS,
    SHAPES,
    ensure_demo_data,
    generate_demo_data,
)
from ernievil2.data.images import decode_base64_image
from ernievil2.data.tokenizer import ErnieTokenizer, read_vocab
from ernievil2.data.tsv import Row, read_rows
from ernievil2.data.vocab import BasicTokenizer, build_vocab, check_coverage
from ernievil2.errors import DemoDataError

SMALL = dict(train_images=40, dev_images=8, test_images=12, captions_per_test_image=5, image_size=64)


def _files(out_dir):
    return {name: open(os.path.join(out_dir, name), "rb").read() for name in sorted(os.listdir(out_dir))}


def _rows(path):
    rows = list(read_rows(path))
    assert all(isinstance(row, Row) for row in rows), [row for row in rows if not isinstance(row, Row)][:1]
    return rows


def _scenes(out_dir, split):
    with open(os.path.join(out_dir, "scenes.jsonl"), encoding="utf-8") as f:
        return {s["image_id"]: s for s in map(json.loads, f) if s["split"] == split}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return str(out), generate_demo_data(str(out), seed=3, **SMALL)


@pytest.fixture(scope="module")
def clean_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    return str(out), generate_demo_data(str(out), seed=5, caption_noise=0.0, **SMALL)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(small_set, tmp_path):
    out, paths = small_set
    generate_demo_data(str(tmp_path / "again"), seed=3, **SMALL)
    generate_demo_data(str(tmp_path / "other"), seed=4, **SMALL)
    first, again, other = _files(out), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert sorted(first) == ["dev.tsv", "manifest.json", "scenes.jsonl", "test.tsv", "train.tsv", "vocab.txt",
                             "zeroshot_colours.tsv", "zeroshot_labels.txt", "zeroshot_templates.txt"]
    assert first == again
    for name in ("train.tsv", "dev.tsv", "test.tsv"):
        assert first[name] != other[name]
    assert set(paths) == {"train", "dev", "test", "vocab", "scenes", "manifest", "zeroshot_images",
                          "zeroshot_labels", "zeroshot_templates"}


def test_a_split_does_not_change_when_another_split_grows(small_set, tmp_path):
    out, _ = small_set
    generate_demo_data(str(tmp_path), seed=3, **{**SMALL, "train_images": 55})
    assert _files(tmp_path)["test.tsv"] == _files(out)["test.tsv"]
    assert _files(tmp_path)["train.tsv"].startswith(_files(out)["train.tsv"])


def test_split_sizes_and_test_captions_share_id_and_image_bytes(small_set):
    out, paths = small_set
    train, dev, test = (_rows(paths[name]) for name in ("train", "dev", "test"))
    assert len(train) == 40 and len({row.image_id for row in train}) == 40
    assert len(dev) == 8 * 5 and len(test) == 12 * 5
    by_image = {}
    for row in test:
        by_image.setdefault(row.image_id, []).append(row)
    assert len(by_image) == 12
    for image_id, rows in by_image.items():
        assert len(rows) == 5
        assert len({row.image_b64 for row in rows}) == 1
        assert len({row.text for row in rows}) == 5, f"{image_id}: captions should be different sentences"
        assert len({row.tags for row in rows}) == 1
    # Rows of one image are adjacent (image-major order), as evaluation tools expect.
    assert [row.image_id for row in test] == [i for i in by_image for _ in range(5)]
    ids = [row.image_id for rows in (train, dev, test) for row in rows]
    assert len(set(ids)) == 40 + 8 + 12, "image ids must be unique across splits"
    manifest = json.load(open(paths["manifest"], encoding="utf-8"))
    assert manifest["params"]["test_images"] == 12 and manifest["files"]["test"]["rows"] == 60


def test_every_image_is_a_jpeg_of_the_configured_size(small_set):
    _, paths = small_set
    for split in ("train", "dev", "test"):
        for row in _rows(paths[split]):
            assert base64.b64decode(row.image_b64)[:2] == b"\xff\xd8"
            assert decode_base64_image(row.image_b64).shape == (64, 64, 3)


def test_evaluation_scenes_are_distinguishable():
    # 200 scenes: without the uniqueness rule, single-group scenes (about 1 in 4) would repeat.
    _, free = demo_data.generate_split("test", 200, 1, image_size=48, unique_signatures=False)
    _, unique = demo_data.generate_split("test", 200, 1, image_size=48, unique_signatures=True)
    assert len({demo_data.signature(s) for s in free}) < 200
    assert len({demo_data.signature(s) for s in unique}) == 200


def test_clean_captions_name_every_colour_shape_and_count(clean_set):
    out, paths = clean_set
    scenes = _scenes(out, "test")
    for row in _rows(paths["test"]):
        scene = scenes[row.image_id]
        assert row.tags == ",".join(f"{g['colour']}色{g['shape']}" for g in scene["groups"])
        for group in scene["groups"]:
            assert group["colour"] in row.text, (row.text, group)
            assert any(word in row.text for word in SHAPES[group["shape"]]), (row.text, group)
            assert demo_data.COUNT_WORDS[group["count"]] in row.text, (row.text, group)
        for colour in set(COLOURS) - {g["colour"] for g in scene["groups"]}:
            assert colour not in row.text, (row.text, scene["groups"])


def test_noisy_captions_still_mostly_name_all_colours_and_shapes(tmp_path):
    generate_demo_data(str(tmp_path), seed=3, **{**SMALL, "train_images": 400})
    scenes = _scenes(str(tmp_path), "train")
    complete = noisy = 0
    for row in _rows(str(tmp_path / "train.tsv")):
        groups = scenes[row.image_id]["groups"]
        names_all = all(g["colour"] in row.text and any(w in row.text for w in SHAPES[g["shape"]]) for g in groups)
        complete += names_all
        noisy += not names_all or " " in row.text or row.text.startswith(demo_data.FILLERS)
    assert complete >= 0.75 * 400, "captions must keep enough signal for retrieval"
    assert noisy >= 0.1 * 400, "some web-caption noise is expected"


def test_objects_have_their_colour_and_sit_in_their_region(small_set):
    out, paths = small_set
    scenes = _scenes(out, "test")
    images = {row.image_id: decode_base64_image(row.image_b64) for row in _rows(paths["test"])}
    size = SMALL["image_size"]
    checked_positions = 0
    for image_id, scene in scenes.items():
        image = images[image_id].astype(np.float64)
        tint = np.array(scene["tint"])
        for group in scene["groups"]:
            nominal = np.array(COLOURS[group["colour"]])
            for obj in group["objects"]:
                x, y = (int(v) for v in obj["center"])
                patch = image[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).mean(axis=0)
                distances = {name: np.linalg.norm(patch - np.array(rgb) - tint) for name, rgb in COLOURS.items()}
                assert min(distances, key=distances.get) == group["colour"], (image_id, group["colour"], patch)
                assert np.linalg.norm(patch - nominal) < 60
            if "position" in group:
                (cx, cy), region = group["objects"][0]["center"], REGIONS[group["position"]]
                assert abs(cx / size - region[0]) <= 0.07 and abs(cy / size - region[1]) <= 0.07
                checked_positions += 1
        # The background, sampled away from every object, has none of the object colours.
        corner = image[:3, :3].reshape(-1, 3).mean(axis=0)
        far = all(np.hypot(o["center"][0], o["center"][1]) > o["radius"] + 6 for g in scene["groups"]
                  for o in g["objects"])
        if far:
            for group in scene["groups"]:
                assert np.linalg.norm(corner - np.array(COLOURS[group["colour"]])) > 40
    assert checked_positions > 0


def test_vocab_has_official_special_ids_and_covers_every_caption_and_tag(small_set):
    _, paths = small_set
    token_to_id, id_to_token, _ = read_vocab(paths["vocab"])
    assert id_to_token[:4] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]"] and id_to_token[-1] == "[UNK]"
    tokenizer = ErnieTokenizer.from_file(paths["vocab"])
    texts = [t for split in ("train", "dev", "test") for row in _rows(paths[split]) for t in (row.text, row.tags)]
    assert check_coverage(tokenizer, texts + ["图片中包含红色圆形, 蓝色三角形"]) == []
    assert check_coverage(tokenizer, ["图中有一只猫"]) == ["图中有一只猫"]  # the check does detect [UNK]


def test_vocab_builder_orders_by_frequency_and_honours_limits(tmp_path):
    tokens = build_vocab(["b b a, c", "b a"], min_count=1)
    assert tokens == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "b", "a", ",", "c", "[UNK]"]
    assert build_vocab(["b b a, c", "b a"], min_count=2) == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "b", "a", "[UNK]"]
    assert build_vocab(["b b a, c", "b a"], max_size=6) == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "b", "[UNK]"]
    # Same basic tokenisation as the tokenizer: CJK split per character, punctuation split, lower-cased.
    assert BasicTokenizer().tokenize("Héllo,红色 圆形!") == ["hello", ",", "红", "色", "圆", "形", "!"]
    with pytest.raises(ValueError, match="max_size"):
        build_vocab(["a"], max_size=3)


def test_build_vocab_cli(small_set, tmp_path, capsys):
    _, paths = small_set
    out = tmp_path / "v.txt"
    assert build_vocab_main([paths["train"], paths["test"], "--out", str(out)]) == 0
    assert "0 texts contain [UNK]" in capsys.readouterr().out
    assert read_vocab(str(out))[1][:4] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("ok\tid1\tAAAA\nonly two\tcolumns\n", encoding="utf-8")
    assert build_vocab_main([str(bad), "--out", str(tmp_path / "w.txt")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "w.txt").exists()
    assert build_vocab_main([str(bad), "--out", str(tmp_path / "w.txt"), "--on-bad-row", "skip"]) == 0
    assert "skipped 1 bad rows" in capsys.readouterr().out
    rare = tmp_path / "rare.tsv"
    rare.write_text("Cat cat dog\tid1\tAAAA\ncat\tid2\tAAAA\tcat,sofa\n", encoding="utf-8")
    assert build_vocab_main([str(rare), "--out", str(tmp_path / "r.txt"), "--min-count", "2"]) == 0
    message = "4 distinct basic tokens, 3 dropped by --min-count/--max-size; 2 texts contain [UNK]"
    assert message in capsys.readouterr().out
    assert read_vocab(str(tmp_path / "r.txt"))[1] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "cat", "[UNK]"]


def test_ensure_demo_data_reuses_a_complete_set_and_regenerates_otherwise(tmp_path):
    params = dict(SMALL, train_images=10, test_images=4, dev_images=2)
    paths, generated = ensure_demo_data(str(tmp_path), **params)
    assert generated
    stamp = os.stat(paths["train"]).st_mtime_ns
    paths2, generated = ensure_demo_data(str(tmp_path), **params)
    assert not generated and paths2["train"] == paths["train"] and os.stat(paths["train"]).st_mtime_ns == stamp
    os.remove(paths["dev"])
    assert ensure_demo_data(str(tmp_path), **params)[1]
    assert ensure_demo_data(str(tmp_path), **{**params, "seed": 1})[1]


@pytest.mark.parametrize("bad", [dict(test_images=0), dict(image_size=20), dict(seed=-1), dict(caption_noise=-1)])
def test_bad_parameters_are_refused(tmp_path, bad):
    with pytest.raises(DemoDataError, match=next(iter(bad))):
        generate_demo_data(str(tmp_path), **{**SMALL, **bad})


def test_cli_writes_the_set_and_reports_bad_arguments(tmp_path):
    run = [sys.executable, "-m", "ernievil2", "demo-data", "--out", str(tmp_path / "d"), "--train-images", "6",
           "--dev-images", "2", "--test-images", "3", "--image-size", "48"]
    done = subprocess.run(run, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(_rows(str(tmp_path / "d" / "test.tsv"))) == 15
    again = subprocess.run(run + ["--if-missing"], capture_output=True, text=True)
    assert again.returncode == 0 and "up to date" in again.stdout
    failed = subprocess.run(run + ["--image-size", "8"], capture_output=True, text=True)
    assert failed.returncode == 2 and failed.stderr.startswith("error: image_size") and "Traceback" not in failed.stderr


def test_zeroshot_files_label_single_colour_test_images(small_set):
    out, paths = small_set
    scenes = {s["image_id"]: s for s in map(json.loads, open(paths["scenes"], encoding="utf-8"))}
    test_images = {row.image_id: row.image_b64 for row in _rows(paths["test"])}
    labels = open(paths["zeroshot_labels"], encoding="utf-8").read().split()
    assert labels == [f"{colour}色" for colour in COLOURS]
    rows = [line.rstrip("\n").split("\t") for line in open(paths["zeroshot_images"], encoding="utf-8")]
    assert rows and len(rows) <= len(test_images)
    for label, image_id, b64 in rows:
        assert {f"{g['colour']}色" for g in scenes[image_id]["groups"]} == {label}
        assert b64 == test_images[image_id]
    expected = {i for i, s in scenes.items() if s["split"] == "test" and len({g["colour"] for g in s["groups"]}) == 1}
    assert {r[1] for r in rows} == expected
    tokenizer = ErnieTokenizer.from_file(paths["vocab"])
    templates = open(paths["zeroshot_templates"], encoding="utf-8").read().split()
    assert not check_coverage(tokenizer, [t.format(label) for t in templates for label in labels])
