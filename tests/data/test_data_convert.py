"""convert-data: image folder + JSONL/CSV captions, Chinese-CLIP imgs.tsv + texts.jsonl, errors that name
file:line, and the skip policy's counts."""
import base64
import json

import cv2
import numpy as np
import pytest

from ernievil2.cli.convert_data import main
from ernievil2.data.convert import convert_chinese_clip, convert_folder
from ernievil2.data.images import decode_base64_image
from ernievil2.data.tsv import Row, read_rows
from ernievil2.errors import BadRowError, ConvertError


def _encode(ext, height, width, value):
    image = np.full((height, width, 3), value, dtype=np.uint8)
    image[: height // 2, :, 2] = 255 - value  # not flat, so a re-encode is visible in the bytes
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    files = {"a.jpg": _encode(".jpg", 20, 30, 40), "b.png": _encode(".png", 16, 16, 90),
             "sub/c.png": _encode(".png", 12, 10, 150), "big.jpg": _encode(".jpg", 100, 200, 200)}
    for name, data in files.items():
        (images / name).write_bytes(data)
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return images, files


def _write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in records), encoding="utf-8")
    return path


def _rows(path):
    rows = list(read_rows(str(path)))
    assert all(isinstance(row, Row) for row in rows)
    return rows


def test_folder_with_jsonl_keeps_original_bytes_and_resolves_ids(folder, tmp_path):
    images, files = folder
    captions = _write_jsonl(tmp_path / "captions.jsonl", [
        {"image": "a.jpg", "caption": "一只猫", "tags": ["猫", "沙发"]},
        {"image": "", "image_id": "b", "text": "一条狗"},           # id looked up as a file stem
        {"image": "sub/c.png", "image_id": "cee", "caption": "第三张\t图", "tags": "红色， 圆形"},
        "",                                                         # blank lines are ignored
        {"image": "a.jpg", "caption": "又一只猫"},
    ])
    summary = convert_folder(str(images), str(captions), str(tmp_path / "out.tsv"))
    rows = _rows(tmp_path / "out.tsv")
    assert (summary.rows, summary.images, summary.skipped) == (4, 3, 0)
    assert [(r.text, r.image_id, r.tags) for r in rows] == [
        ("一只猫", "a", "猫,沙发"), ("一条狗", "b", None), ("第三张 图", "cee", "红色,圆形"), ("又一只猫", "a", None)]
    assert base64.b64decode(rows[0].image_b64) == files["a.jpg"]
    assert base64.b64decode(rows[2].image_b64) == files["sub/c.png"]
    assert rows[3].image_b64 == rows[0].image_b64
    assert "wrote 4 rows (3 images)" in summary.line()


def test_folder_with_csv_and_max_side(folder, tmp_path):
    images, files = folder
    captions = tmp_path / "caps.csv"
    captions.write_text('image,caption,tags\nbig.jpg,"大图, 有逗号","天空,海"\nb.png,小图,\n', encoding="utf-8")
    summary = convert_folder(str(images), str(captions), str(tmp_path / "out.tsv"), max_side=50)
    big, small = _rows(tmp_path / "out.tsv")
    assert (big.text, big.tags, small.tags) == ("大图, 有逗号", "天空,海", None)
    assert decode_base64_image(big.image_b64).shape == (25, 50, 3)  # 100x200 shrunk to a 50 px long side
    assert base64.b64decode(small.image_b64) == files["b.png"]      # already small: untouched
    assert summary.rows == 2


@pytest.mark.parametrize("line, expected", [
    ('{"image": "missing.jpg", "caption": "x"}', "image 'missing.jpg' not found"),
    ('{"image": "broken.jpg", "caption": "x"}', "cannot decode image"),
    ('{"image": "a.jpg", "caption": "x"', "not valid JSON"),
    ('{"image": "a.jpg"}', "no caption"),
    ('{"image": "a.jpg", "caption": " "}', "empty caption"),
    ('{"image": "", "image_id": "", "caption": "x"}', "empty image id"),
    ('["a.jpg", "x"]', "expected a JSON object"),
    ('{"image": "a.jpg", "caption": "x", "tags": ["a,b"]}', "contains a comma"),
])
def test_folder_errors_name_file_and_line_and_write_nothing(folder, tmp_path, line, expected):
    images, _ = folder
    captions = _write_jsonl(tmp_path / "c.jsonl", [{"image": "a.jpg", "caption": "ok"}, line])
    out = tmp_path / "out.tsv"
    with pytest.raises(BadRowError, match=expected) as info:
        convert_folder(str(images), str(captions), str(out))
    assert str(info.value).startswith(f"{captions}:2: ")
    assert not out.exists() and list(tmp_path.glob(".out.tsv.tmp*")) == []


def test_two_files_cannot_share_an_image_id(folder, tmp_path):
    images, _ = folder
    captions = _write_jsonl(tmp_path / "c.jsonl", [{"image": "a.jpg", "image_id": "x", "caption": "1"},
                                                   {"image": "b.png", "image_id": "x", "caption": "2"}])
    with pytest.raises(BadRowError, match=r"c.jsonl:2: image id 'x' already stands for"):
        convert_folder(str(images), str(captions), str(tmp_path / "o.tsv"))


def test_skip_policy_counts_bad_rows_and_logs_them(folder, tmp_path):
    images, _ = folder
    captions = _write_jsonl(tmp_path / "c.jsonl", [
        {"image": "a.jpg", "caption": "good"}, '{"broken json', {"image": "nope.png", "caption": "x"},
        {"image": "broken.jpg", "caption": "x"}, {"image": "broken.jpg", "caption": "again"},
        {"image": "b.png", "caption": "good too"}])
    log = tmp_path / "skipped.txt"
    summary = convert_folder(str(images), str(captions), str(tmp_path / "o.tsv"), on_bad_row="skip",
                             bad_row_log=str(log))
    assert (summary.rows, summary.images, summary.skipped) == (2, 2, 4)
    assert [r.text for r in _rows(tmp_path / "o.tsv")] == ["good", "good too"]
    logged = log.read_text(encoding="utf-8").splitlines()
    assert [entry.split(": ", 1)[0] for entry in logged] == [f"{captions}:{n}" for n in (2, 3, 4, 5)]
    assert "skipped 4 bad rows" in summary.line()


def test_csv_problems(folder, tmp_path):
    images, _ = folder
    bad_header = tmp_path / "h.csv"
    bad_header.write_text("picture,caption\na.jpg,x\n", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"h.csv:1: unknown CSV column\(s\) 'picture'"):
        convert_folder(str(images), str(bad_header), str(tmp_path / "o.tsv"))
    short = tmp_path / "s.csv"
    short.write_text("image,caption\n\na.jpg,fine\nb.png\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"s.csv:4: expected 2 CSV fields"):
        convert_folder(str(images), str(short), str(tmp_path / "o.tsv"))
    with pytest.raises(ConvertError, match="cannot tell the captions format"):
        convert_folder(str(images), str(_write_jsonl(tmp_path / "c.txt", [])), str(tmp_path / "o.tsv"))


def _clip_files(tmp_path, bad_image=False):
    one, two = _encode(".jpg", 24, 24, 10), _encode(".png", 8, 8, 250)
    # Chinese-CLIP writes URL-safe base64; padding is often stripped.
    imgs = tmp_path / "train_imgs.tsv"
    lines = [f"1\t{base64.urlsafe_b64encode(one).decode().rstrip('=')}", f"2\t{base64.b64encode(two).decode()}"]
    if bad_image:
        lines.append(f"3\t{base64.b64encode(b'garbage bytes').decode()}")
    imgs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return imgs, one, two


def test_chinese_clip_style_gives_one_row_per_text_and_image(tmp_path):
    imgs, one, two = _clip_files(tmp_path)
    texts = _write_jsonl(tmp_path / "train_texts.jsonl", [
        {"text_id": 10, "text": "两张图都对", "image_ids": [1, 2]},
        {"text_id": 11, "text": "只有第二张", "image_ids": ["2"]}])
    summary = convert_chinese_clip(str(imgs), str(texts), str(tmp_path / "out.tsv"))
    rows = _rows(tmp_path / "out.tsv")
    assert [(r.text, r.image_id) for r in rows] == [("两张图都对", "1"), ("两张图都对", "2"), ("只有第二张", "2")]
    # Output is standard base64 of the original bytes, whatever alphabet the input used.
    assert rows[0].image_b64 == base64.b64encode(one).decode() and base64.b64decode(rows[1].image_b64) == two
    assert (summary.rows, summary.images, summary.skipped) == (3, 2, 0)


def test_chinese_clip_errors_and_skips(tmp_path):
    imgs, _, _ = _clip_files(tmp_path, bad_image=True)
    texts = _write_jsonl(tmp_path / "t.jsonl", [{"text": "好", "image_ids": [1]}, {"text": "未知", "image_ids": [9]},
                                                {"text": "坏图", "image_ids": [3, 2]}, {"text": "", "image_ids": [1]}])
    with pytest.raises(BadRowError, match=r"t.jsonl:2: unknown image id '9'"):
        convert_chinese_clip(str(imgs), str(texts), str(tmp_path / "o.tsv"))
    summary = convert_chinese_clip(str(imgs), str(texts), str(tmp_path / "o.tsv"), on_bad_row="skip")
    assert [(r.text, r.image_id) for r in _rows(tmp_path / "o.tsv")] == [("好", "1"), ("坏图", "2")]
    assert summary.skipped == 3
    reasons = [str(bad) for bad in summary.policy.skipped]
    assert reasons[1].startswith(f"{texts}:3: image '3' ({imgs}:3): cannot decode image")
    assert reasons[2] == f"{texts}:4: empty text"
    duplicate = tmp_path / "dup_imgs.tsv"
    duplicate.write_text(imgs.read_text(encoding="utf-8") + "1\tAAAA\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=r"dup_imgs.tsv:4: image id '1' already defined on line 1"):
        convert_chinese_clip(str(duplicate), str(texts), str(tmp_path / "o.tsv"))


def test_cli_summary_and_clear_errors(folder, tmp_path, capsys):
    images, _ = folder
    captions = _write_jsonl(tmp_path / "c.jsonl",
                            [{"image": "a.jpg", "caption": "好"}, {"image": "zz.jpg", "caption": "x"}])
    out = tmp_path / "o.tsv"
    assert main(["--images", str(images), "--captions", str(captions), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {captions}:2: image 'zz.jpg' not found") and "Traceback" not in err
    assert not out.exists()
    assert main(["--images", str(images), "--captions", str(captions), "--out", str(out), "--on-bad-row", "skip"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 1 rows (1 images) to {out}; skipped 1 bad rows")
    assert main(["--images", str(images), "--captions", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    assert "none.jsonl: captions file not found" in capsys.readouterr().err
    assert main(["--images", str(images), "--out", str(out)]) == 2
    assert "--images and --captions go together" in capsys.readouterr().err
