"""The Python API: `ernievil2.load(...)` gives the official embeddings for every input kind (path, bytes, RGB
array) with both engines, its tokenize/preprocess are the exact model inputs, and bad input is named."""
import base64
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import REPO, make_tiny_model
from ernievil2.errors import ConfigError, InputError


def read_golden(golden_dir):
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(golden_dir, "golden.coco.tsv"),
                                                           encoding="utf-8")]
    official = [line.rstrip("\n").split("\t") for line in open(os.path.join(golden_dir, "official_embeddings.out"))]
    text = np.array([[float(x) for x in r[0].split()] for r in official])
    image = np.array([[float(x) for x in r[1].split()] for r in official])
    return [r[0] for r in rows], [base64.b64decode(r[2]) for r in rows], text, image


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def golden_inputs(golden_dir, tmp_path_factory):
    texts, images, text_ref, image_ref = read_golden(golden_dir)
    folder = tmp_path_factory.mktemp("golden_images")
    paths = []
    for i, data in enumerate(images):
        path = folder / f"row{i:02d}.img"  # the extension does not matter: the format comes from the bytes
        path.write_bytes(data)
        paths.append(path)
    arrays = [cv2.cvtColor(cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for d in images]
    return {"texts": texts, "path": paths, "bytes": images, "array": arrays, "text_ref": text_ref,
            "image_ref": image_ref}


@pytest.mark.parametrize("engine", ["paddle_inference", "eager", "openvino"])
def test_golden_parity_for_every_input_kind(engine, golden_inputs, reference_checkpoint, vocab_path):
    import ernievil2
    if engine == "openvino":
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e \".[openvino]\")")
    model = ernievil2.load(reference_checkpoint, vocab_file=vocab_path, device="cpu", engine=engine)
    assert model.embed_dim == 768
    text = model.encode_text(golden_inputs["texts"], batch_size=5)
    assert text.dtype == np.float32 and text.shape == (16, 768)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert cosines(text, golden_inputs["text_ref"]).min() >= 0.99999
    kinds = ("path", "bytes", "array") if engine == "paddle_inference" else ("path",)  # eager Base is slow
    for kind in kinds:
        image = model.encode_image(golden_inputs[kind], batch_size=4)
        assert image.dtype == np.float32 and image.shape == (16, 768), kind
        assert cosines(image, golden_inputs["image_ref"]).min() >= 0.99999, kind
    from ernievil2.interop.convert import read_state
    temperature = read_state(reference_checkpoint)["contrastive_loss_mm.temperature_b"]
    assert model.logit_scale == pytest.approx(float(np.exp(temperature[0])), rel=1e-6)


def test_tokenize_and_preprocess_are_the_official_model_inputs(golden_dir, golden_inputs, tmp_path, vocab_path):
    import json

    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.infer.engines import EagerEncoder
    model = Model(EagerEncoder(make_tiny_model()), ErnieTokenizer.from_file(vocab_path), image_size=224)
    official = [json.loads(line) for line in open(os.path.join(golden_dir, "official_token_ids.jsonl"),
                                                  encoding="utf-8")]
    ids = model.tokenize(golden_inputs["texts"])
    for row, ref in zip(ids, official):
        expected = [i for i in ref["model_input_ids"] if i != 0]
        assert row[:len(expected)].tolist() == expected and not row[len(expected):].any()
    pixels = model.preprocess(golden_inputs["bytes"][:4])
    stats = [json.loads(line) for line in open(os.path.join(golden_dir, "official_pixels.jsonl"))][:4]
    for got, ref in zip(pixels, stats):
        assert got.shape == (3, 224, 224)
        assert abs(float(got.astype(np.float64).sum()) - ref["sum"]) <= 1e-4 * max(1.0, ref["abs_sum"])
    # paths, bytes and arrays of the same image are the same model input
    np.testing.assert_array_equal(model.preprocess(golden_inputs["path"][:2]), pixels[:2])
    np.testing.assert_array_equal(model.preprocess(golden_inputs["array"][:2]), pixels[:2])


def test_bad_inputs_are_named(tmp_path, vocab_path):
    from ernievil2.api import Model
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.infer.engines import EagerEncoder
    model = Model(EagerEncoder(make_tiny_model()), ErnieTokenizer.from_file(vocab_path), image_size=32)
    good = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(InputError, match=r"^images\[1\] \(.*broken\.jpg\): cannot decode image"):
        model.encode_image([good, str(broken)])
    with pytest.raises(InputError, match=r"^images\[0\] \(.*absent\.png\): No such file"):
        model.encode_image([tmp_path / "absent.png"])
    with pytest.raises(InputError, match=r"^images\[2\]: expected a uint8 HxWx3 RGB array"):
        model.encode_image([good, good, np.zeros((4, 4), np.float32)])
    with pytest.raises(InputError, match=r"^texts\[1\]: expected str"):
        model.encode_text(["ok", 3])
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        model.encode_text(["ok"], batch_size=0)
    assert model.encode_text([]).shape == (0, 32)
    single = model.encode_image(good)  # one image need not be wrapped in a list
    np.testing.assert_array_equal(single, model.encode_image([good]))


def test_load_names_missing_files(tmp_path, vocab_path):
    import ernievil2
    with pytest.raises(InputError, match="vocab_file: file not found"):
        ernievil2.load(str(tmp_path / "w.pdparams"), vocab_file=str(tmp_path / "vocab.txt"))
    with pytest.raises(InputError, match="weights: file not found.*ERNIE_VIL2_BASE_ViT"):
        ernievil2.load(str(tmp_path / "w.pdparams"), vocab_file=vocab_path)


def test_importing_the_package_or_its_api_does_not_load_paddle():
    """Paddle is imported by the engines that run it (the OpenVINO engine never does): seconds of start-up."""
    code = "import sys, ernievil2; print('paddle' in sys.modules, callable(ernievil2.load), 'paddle' in sys.modules)"
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, "packages"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", "True", "False"], out.stderr[-2000:]
