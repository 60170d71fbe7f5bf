"""`embed` (image folders and TSVs, text files and JSONL -> .npz) and `zeroshot` (predictions, accuracy), against
references computed here from the Python API on the same tiny model."""
import base64
import io
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml

from conftest import REPO, VOCAB, make_tiny_model
from ernievil2.errors import BadRowError, ConfigError, InputError
from ernievil2.fileio import read_strings
from ernievil2.infer.engines import EagerEncoder
from ernievil2.infer.gallery import load_embed_config, run_embed
from ernievil2.infer.zeroshot import load_zeroshot_config, run_zeroshot


def picture(seed, size=(40, 30)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)


def encoded(rgb, ext):
    if ext == ".gif":
        from PIL import Image
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="GIF")
        return buffer.getvalue()
    return cv2.imencode(ext, rgb[..., ::-1])[1].tobytes()


def reference_model():
    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    return Model(EagerEncoder(make_tiny_model(seed=5)), ErnieTokenizer.from_file(VOCAB), image_size=32)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "gallery"
    files = {"b/cat.png": ".png", "a.jpg": ".jpg", "b/c/deep.webp": ".webp", "z.bmp": ".bmp", "anim.gif": ".gif"}
    for i, (name, ext) in enumerate(files.items()):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(encoded(picture(i), ext))
    (root / "notes.txt").write_text("not an image")
    return root


def embed(tiny, **values):
    return run_embed(load_embed_config(None, list({**tiny, **values}.items())),
                     encoder=EagerEncoder(make_tiny_model(seed=5)))


def test_image_folder_gallery(tiny, folder, tmp_path):
    out = str(tmp_path / "images.npz")
    summary = embed(tiny, images=str(folder), output_file=out)
    assert (summary.read, summary.written) == (5, 5)
    with np.load(out) as z:
        ids, emb = read_strings(z, "ids"), z["embeddings"]
        assert "texts" not in z.files
    assert ids == ["a.jpg", "anim.gif", "b/c/deep.webp", "b/cat.png", "z.bmp"]  # relative paths, sorted
    assert emb.dtype == np.float32 and emb.shape == (5, 32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    ref = reference_model().encode_image([str(folder / name) for name in ids])
    np.testing.assert_allclose(emb, ref, atol=1e-6)


def test_bad_images_under_both_policies(tiny, folder, tmp_path):
    (folder / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    out = tmp_path / "images.npz"
    with pytest.raises(BadRowError, match=r"broken\.jpg: bad image: cannot decode image"):
        embed(tiny, images=str(folder), output_file=str(out))
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # nothing half-written
    summary = embed(tiny, images=str(folder), output_file=str(out), on_bad_row="skip")
    assert (summary.read, summary.written, summary.skipped) == (6, 5, {"bad image": 1})
    log = open(summary.bad_row_log, encoding="utf-8").read()
    assert "broken.jpg: bad image" in log
    assert "b/broken.jpg" not in read_strings(np.load(out), "ids")


def test_image_tsv_gallery_and_its_bad_rows(tiny, tmp_path):
    rows = [f"img{i}\t{base64.b64encode(encoded(picture(i), '.jpg')).decode()}" for i in range(4)]
    rows.insert(2, "img-bad\tnot*base64")
    tsv = tmp_path / "gallery_imgs.tsv"
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=f"{tsv}:3: bad image: invalid base64"):
        embed(tiny, images=str(tsv), output_file=str(tmp_path / "g.npz"))
    rows.insert(4, "only-one-column")
    tsv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(BadRowError, match=f"{tsv}:5: expected 2 tab-separated columns like line 1, found 1"):
        embed(tiny, images=str(tsv), output_file=str(tmp_path / "g.npz"))  # rows are checked ahead of decoding
    summary = embed(tiny, images=str(tsv), output_file=str(tmp_path / "g.npz"), on_bad_row="skip")
    assert summary.written == 4 and sum(summary.skipped.values()) == 2
    log = open(summary.bad_row_log, encoding="utf-8").read().splitlines()
    assert log[0].startswith(f"{tsv}:3: bad image") and log[1].startswith(f"{tsv}:5: expected 2 tab-separated")
    z = np.load(tmp_path / "g.npz")
    assert read_strings(z, "ids") == ["img0", "img1", "img2", "img3"]
    ref = reference_model().encode_image([encoded(picture(i), ".jpg") for i in range(4)])
    np.testing.assert_allclose(z["embeddings"], ref, atol=1e-6)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_text_galleries(tiny, tmp_path, kind):
    queries = ["红色的汽车停在路边", "一只猫", "a dog running on the grass, 在草地上"]
    if kind == "txt":
        src = tmp_path / "queries.txt"
        src.write_text(f"{queries[0]}\n\n{queries[1]}\n{queries[2]}\n", encoding="utf-8")
        expected_ids = ["1", "3", "4"]  # line numbers; the blank line is skipped
    else:
        src = tmp_path / "texts.jsonl"
        src.write_text("".join(json.dumps({"text_id": 10 + i, "text": q, "image_ids": [i]}, ensure_ascii=False)
                               + "\n" for i, q in enumerate(queries)), encoding="utf-8")
        expected_ids = ["10", "11", "12"]
    out = tmp_path / "texts.npz"
    summary = embed(tiny, texts=str(src), output_file=str(out))
    assert summary.written == 3
    z = np.load(out)
    assert read_strings(z, "ids") == expected_ids and read_strings(z, "texts") == queries
    np.testing.assert_allclose(z["embeddings"], reference_model().encode_text(queries), atol=1e-6)


def test_bad_text_rows_and_config_errors(tiny, tmp_path):
    src = tmp_path / "texts.jsonl"
    src.write_text('{"text_id": 1, "text": "好"}\n{"text": "no id"}\n', encoding="utf-8")
    with pytest.raises(BadRowError, match=f"{src}:2: expected a JSON object with text_id and text"):
        embed(tiny, texts=str(src), output_file=str(tmp_path / "t.npz"))
    with pytest.raises(ConfigError, match="set exactly one of 'images' or 'texts'"):
        load_embed_config(None, list({**tiny, "output_file": "x.npz"}.items()))
    with pytest.raises(ConfigError, match="'output_file' must end in .npz"):
        load_embed_config(None, list({**tiny, "texts": str(src)}.items()))
    with pytest.raises(InputError, match="images source not found"):
        embed(tiny, images=str(tmp_path / "nowhere"), output_file=str(tmp_path / "t.npz"))


def test_embed_command_end_to_end(tiny, folder, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "test_file": "unused.tsv"}, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "cli.npz"
    run = subprocess.run([sys.executable, "-m", "ernievil2", "embed", str(config), "-o", f"images={folder}",
                          "-o", f"output_file={out}", "-o", "engine=eager", "-o", "num_workers=1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages")))
    assert run.returncode == 0, run.stderr[-2000:]
    assert "images read: 5, embedded: 5, skipped: 0" in run.stdout
    assert np.load(out)["embeddings"].shape == (5, 32)


# ------------------------------------------------------------------------------------------------ zero-shot

LABELS = ["红色", "绿色", "蓝色", "黄色"]


def labelled_tsv(path, labels_of_rows):
    rows = [f"{label}\timg{i}\t{base64.b64encode(encoded(picture(i), '.png')).decode()}"
            for i, label in enumerate(labels_of_rows)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def zeroshot(tiny, tmp_path, images, templates=None, top_k=3):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    values = {**tiny, "images": str(images), "labels": str(labels), "top_k": top_k,
              "output_file": str(tmp_path / "pred.jsonl")}
    if templates:
        (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n", encoding="utf-8")
        values["templates"] = str(tmp_path / "templates.txt")
    return run_zeroshot(load_zeroshot_config(None, list(values.items())),
                        encoder=EagerEncoder(make_tiny_model(seed=5)))


def reference_predictions(images, templates, top_k):
    """From embeddings, here: class vector = normalised mean of normalised prompt embeddings; softmax of
    logit_scale x cosine."""
    model = reference_model()
    classes = []
    for label in LABELS:
        prompts = model.encode_text([t.format(label) for t in templates]).astype(np.float64)
        mean = prompts.mean(axis=0)
        classes.append(mean / np.linalg.norm(mean))
    logits = model.logit_scale * model.encode_image(images).astype(np.float64) @ np.array(classes).T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return [[(LABELS[j], probs[i, j]) for j in np.argsort(-probs[i], kind="stable")[:top_k]]
            for i in range(len(probs))]


@pytest.mark.parametrize("templates", [None, ["一张{}的图片", "{}"]])
def test_zeroshot_predictions_equal_a_reference_from_embeddings(tiny, folder, tmp_path, templates):
    from ernievil2.data.prompts import ZEROSHOT_TEMPLATES
    summary = zeroshot(tiny, tmp_path, folder, templates)
    assert (summary.read, summary.written, summary.accuracy) == (5, 5, None)
    got = [json.loads(line) for line in open(tmp_path / "pred.jsonl", encoding="utf-8")]
    ids = ["a.jpg", "anim.gif", "b/c/deep.webp", "b/cat.png", "z.bmp"]
    assert [g["image_id"] for g in got] == ids  # input order
    ref = reference_predictions([str(folder / i) for i in ids], templates or ZEROSHOT_TEMPLATES, 3)
    for g, r in zip(got, ref):
        assert [p["label"] for p in g["predictions"]] == [label for label, _ in r]
        np.testing.assert_allclose([p["score"] for p in g["predictions"]], [p for _, p in r], atol=2e-6)


def test_zeroshot_accuracy_on_a_labelled_tsv(tiny, tmp_path, capsys):
    truth = ["红色", "绿色", "蓝色", "黄色", "红色", "蓝色"]
    tsv = labelled_tsv(tmp_path / "labelled.tsv", truth)
    summary = zeroshot(tiny, tmp_path, tsv, top_k=2)
    got = [json.loads(line) for line in open(tmp_path / "pred.jsonl", encoding="utf-8")]
    assert [g["label"] for g in got] == truth
    top1 = [g["predictions"][0]["label"] == g["label"] for g in got]
    top2 = [g["label"] in [p["label"] for p in g["predictions"]] for g in got]
    acc = summary.accuracy
    assert acc["images"] == 6 and acc["top1"] == round(100 * sum(top1) / 6, 2)
    assert acc["top5"] == round(100 * sum(top2) / 6, 2)  # top_k 2 here: "top-5" counts within the k given
    red = [t for t, label in zip(top1, truth) if label == "红色"]
    assert acc["per_class"]["红色"] == {"images": 2, "top1": round(100 * sum(red) / 2, 2),
                                       "top5": acc["per_class"]["红色"]["top5"]}
    table = "\n".join(summary.lines())
    assert "| Class" in table and "| all " in table and "红色" in table


def test_zeroshot_unknown_label_names_the_line(tiny, tmp_path):
    tsv = labelled_tsv(tmp_path / "labelled.tsv", ["红色", "紫色"])
    with pytest.raises(InputError, match=rf"{tsv}:2: label '紫色' is not one of the classes in .*labels\.txt"):
        zeroshot(tiny, tmp_path, tsv)
    assert not (tmp_path / "pred.jsonl").exists()


def test_zeroshot_command_prints_json(tiny, tmp_path):
    tsv = labelled_tsv(tmp_path / "labelled.tsv", ["红色", "绿色"])
    (tmp_path / "labels.txt").write_text("\n".join(LABELS), encoding="utf-8")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**tiny, "test_file": "unused.tsv"}, allow_unicode=True), encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "ernievil2", "zeroshot", str(config), "--json", "-o",
                          f"images={tsv}", "-o", f"labels={tmp_path / 'labels.txt'}", "-o", "engine=eager",
                          "-o", f"output_file={tmp_path / 'p.jsonl'}"], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages")))
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["classified"] == 2 and report["accuracy"]["images"] == 2
    assert set(report["accuracy"]["per_class"]) == {"红色", "绿色"}
