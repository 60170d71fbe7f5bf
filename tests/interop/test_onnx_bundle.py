"""`python -m ernievil2 export --format onnx`: one self-contained ONNX file per tower plus onnx.json and the
vocabulary, run by ONNX Runtime with any batch size and text length, and on the seed-7 reference checkpoint equal
to the official release's golden embeddings."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import REPO, TINY_TEXT, TINY_VISION, make_tiny_model, spread

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e \".[onnx]\")")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install -e \".[onnx]\")")
pytest.importorskip("paddle2onnx", reason="paddle2onnx is not installed (pip install -e \".[onnx]\")")

import paddle  # noqa: E402

from ernievil2.cli.main import main  # noqa: E402
from ernievil2.data.images import decode_base64_image  # noqa: E402
from ernievil2.data.tokenizer import ErnieTokenizer  # noqa: E402
from ernievil2.data.transforms import preprocess_eval  # noqa: E402
from ernievil2.model.weights import save_weights  # noqa: E402

MIN_COS = 0.99999  # the bar every engine of the project is held to (interop.export.MIN_COSINE)


def session(path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def min_cos(a, b):
    assert a.shape == b.shape
    return float(((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).min())


def write_config(tmp_path, weights, vocab, **extra):
    text_config = tmp_path / "tiny_text.json"
    text_config.write_text(json.dumps(TINY_TEXT))
    cfg = {"device": "cpu", "vocab_file": vocab, "text_model_config": str(text_config), "test_file": "unused.tsv",
           "output_file": str(tmp_path / "unused.out"), "init_from_params": weights,
           "vision_model": dict(TINY_VISION), "image_size": TINY_VISION["image_size"], "cpu_threads": 1, **extra}
    path = tmp_path / "infer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, vocab_path):
    tmp_path = tmp_path_factory.mktemp("bundle")
    model = spread(make_tiny_model(), seed=8)
    config = write_config(tmp_path, save_weights(model, str(tmp_path / "tiny.safetensors")), vocab_path)
    out = tmp_path / "onnx"
    assert main(["export", "--format", "onnx", config, "--out", str(out)]) == 0
    return model, out, config


def test_the_bundle_holds_two_documented_towers_and_the_vocabulary(tiny_bundle, vocab_path):
    _, out, _ = tiny_bundle
    assert sorted(os.listdir(out)) == ["image.onnx", "onnx.json", "text.onnx", "vocab.txt"]
    assert sorted(os.listdir(out.parent)) == ["infer.yaml", "onnx", "tiny.safetensors", "tiny_text.json"]
    with open(vocab_path, "rb") as a, open(out / "vocab.txt", "rb") as b:
        assert a.read() == b.read()
    meta = json.loads((out / "onnx.json").read_text())
    assert meta["format"] == "ernievil2-onnx" and meta["embed_dim"] == 32 and meta["normalized"] is True
    assert meta["tokenization"]["pad_id"] == 0 and meta["tokenization"]["max_len"] == 48
    assert meta["image_preprocessing"]["layout"] == "NCHW" and len(meta["image_preprocessing"]["std"]) == 3
    expected = {"image": ("pixels", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32]),
                "text": ("input_ids", onnx.TensorProto.INT64, ["batch", "length"])}
    for tower, (name, dtype, dims) in expected.items():
        info = meta["towers"][tower]
        assert info["inputs"] == [{"name": name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(dtype).name,
                                   "shape": dims}]
        assert info["outputs"] == [{"name": "embedding", "dtype": "float32", "shape": ["batch", 32]}]
        model = onnx.load(str(out / info["file"]))
        onnx.checker.check_model(model, full_check=True)
        (graph_input,), (graph_output,) = model.graph.input, model.graph.output
        assert graph_input.name == name and graph_input.type.tensor_type.elem_type == dtype
        assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == dims
        assert graph_output.name == "embedding"
        assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch", 32]
        read = {i for node in model.graph.node for i in node.input}
        assert all(init.name in read for init in model.graph.initializer), "unused initializers left in"


def test_onnx_runtime_equals_eager_for_any_batch_and_length(tiny_bundle):
    model, out, _ = tiny_bundle
    image, text = session(out / "image.onnx"), session(out / "text.onnx")
    rng = np.random.default_rng(0)
    for batch in (1, 3, 2):
        pixels = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = image.run(["embedding"], {"pixels": pixels})[0]
        with paddle.no_grad():
            want = model.encode_image(paddle.to_tensor(pixels), normalize=True).numpy()
        assert got.shape == (batch, 32) and got.dtype == np.float32
        assert min_cos(got, want) >= MIN_COS, batch
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    for batch, length in ((1, 2), (3, 9), (2, 64), (1, 1)):
        ids = rng.integers(4, 40000, (batch, length)).astype(np.int64)
        ids[:, 0] = 1
        if batch > 1:
            ids[1, length // 2:] = 0  # a padded row
        got = text.run(["embedding"], {"input_ids": ids})[0]
        with paddle.no_grad():
            want = model.encode_text(paddle.to_tensor(ids), normalize=True).numpy()
        assert got.shape == (batch, 32) and min_cos(got, want) >= MIN_COS, (batch, length)
    # different inputs give different embeddings, so agreeing above is not an accident of a flat model
    ids = np.array([[1, 500, 2], [1, 900, 2]], np.int64)
    assert min_cos(*np.split(text.run(["embedding"], {"input_ids": ids})[0], 2)) < 0.99


def test_bad_requests_get_one_line_errors(tiny_bundle, tmp_path, capsys):
    _, _, config = tiny_bundle
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--format", "onnx", config])
    assert exit_info.value.code == 2 and "--format onnx needs --out DIR" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["export", "--format", "onnx", config, "--out", str(foreign)]) == 2
    err = capsys.readouterr().err
    assert "refusing to replace it" in err and "Traceback" not in err
    assert os.listdir(foreign) == ["notes.txt"]


def test_reference_checkpoint_bundle_matches_the_official_embeddings(tmp_path, reference_checkpoint, golden_dir,
                                                                      vocab_path):
    """The Base towers of the seed-7 official-layout checkpoint, exported with the command a user types and run
    by ONNX Runtime on the golden rows (tokenised with the bundle's own vocab.txt), in batches of 1 and 3."""
    tsv = os.path.join(golden_dir, "golden.coco.tsv")
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu", "vocab_file": vocab_path, "test_file": tsv, "output_file": str(tmp_path / "unused.out"),
        "text_model_config": os.path.join(REPO, "packages", "ernie_base_3.0", "ernie_config.base.json"),
        "init_from_params": reference_checkpoint}))
    out = tmp_path / "onnx"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(REPO, "packages"),
                                                                     os.environ.get("PYTHONPATH")]))}
    export = subprocess.run([sys.executable, "-m", "ernievil2", "export", "--format", "onnx", str(config),
                             "--out", str(out), "--no-verify"], capture_output=True, text=True, env=env, timeout=900)
    assert export.returncode == 0, export.stderr[-3000:]
    with open(tsv, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f]
    with open(os.path.join(golden_dir, "official_embeddings.out"), encoding="utf-8") as f:
        official = [line.rstrip("\n").split("\t") for line in f]
    ref_text = np.array([[float(x) for x in r[0].split()] for r in official], np.float32)
    ref_image = np.array([[float(x) for x in r[1].split()] for r in official], np.float32)
    tokenizer = ErnieTokenizer.from_file(str(out / "vocab.txt"))
    text, image = session(out / "text.onnx"), session(out / "image.onnx")
    for rows_of_batch in (slice(0, 1), slice(1, 4), slice(4, 16)):
        ids = tokenizer.batch_encode([r[0] for r in rows[rows_of_batch]], max_len=48)
        got = text.run(["embedding"], {"input_ids": ids})[0]
        assert min_cos(got, ref_text[rows_of_batch]) >= MIN_COS, rows_of_batch
    for rows_of_batch in (slice(0, 1), slice(1, 4)):
        pixels = np.stack([preprocess_eval(decode_base64_image(r[2])) for r in rows[rows_of_batch]])
        got = image.run(["embedding"], {"pixels": pixels})[0]
        assert min_cos(got, ref_image[rows_of_batch]) >= MIN_COS, rows_of_batch
    assert min_cos(ref_text[:1], ref_text[1:2]) < 0.99  # the golden rows differ from each other
