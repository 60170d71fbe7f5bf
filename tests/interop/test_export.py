"""Exported towers (paddle.jit.save) served by Paddle Inference: equal to the eager model for any batch size and
text length, padding-invariant, wired into run_infer's `engine: paddle_inference`, clear errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
import yaml

from conftest import REPO, TINY_TEXT, TINY_VISION, make_tiny_model, spread
from ernievil2.cli.export import main
from ernievil2.errors import InferenceModelError, RuntimeSupportError
from ernievil2.infer.options import load_infer_config
from ernievil2.infer.predictor import PredictorEncoder
from ernievil2.infer.run import run_inference
from ernievil2.interop.export import META_FILE, export_towers, read_export_meta
from ernievil2.interop.layouts import to_paddlenlp
from ernievil2.model.weights import read_raw_state, save_weights
from ernievil2.runtime import cpu_has_bf16

MIN_COS = 0.99999


def eager_text(model, ids):
    with paddle.no_grad():
        return model.encode_text(paddle.to_tensor(ids), normalize=True).numpy()


def eager_image(model, pixels):
    with paddle.no_grad():
        return model.encode_image(paddle.to_tensor(pixels), normalize=True).numpy()


def random_ids(rng, batch, length, pad_from=None):
    ids = rng.integers(4, 40000, (batch, length)).astype(np.int64)
    ids[:, 0] = 1
    for row, start in (pad_from or {}).items():
        ids[row, start:] = 0
    return ids


def min_cos(a, b):
    """Smallest row-wise cosine of two batches of embeddings, which must both be L2-normalised."""
    assert a.shape == b.shape and a.dtype == np.float32
    for x in (a, b):
        np.testing.assert_allclose(np.linalg.norm(x, axis=-1), 1.0, atol=1e-4)
    return float((a * b).sum(-1).min())


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = spread(make_tiny_model(), seed=21)  # unit-scale weights: different inputs give different embeddings
    out = str(tmp_path_factory.mktemp("export") / "towers")
    export_towers(model, out)
    return model, out


def test_export_writes_both_towers_and_a_description(exported):
    model, out = exported
    meta = read_export_meta(out)
    assert meta["embed_dim"] == 32 and meta["image_size"] == 32 and meta["pad_token_id"] == 0
    assert meta["max_text_len"] == 64 and meta["normalized"] is True
    assert meta["model_config"]["vision"]["layers"] == 2 and meta["model_config"]["text"]["hidden_size"] == 32
    assert meta["towers"]["image"]["input"] == {"name": "pixels", "dtype": "float32", "shape": [-1, 3, 32, 32]}
    assert meta["towers"]["text"]["input"] == {"name": "input_ids", "dtype": "int64", "shape": [-1, -1]}
    for tower in ("image", "text"):
        for key in ("model_file", "params_file"):
            assert os.path.isfile(os.path.join(out, meta["towers"][tower][key]))
    parent = os.path.dirname(out)
    assert os.listdir(parent) == ["towers"], "staging directory left behind"


@pytest.mark.parametrize("use_onednn", [True, False], ids=["onednn", "plain"])
def test_predictor_equals_eager_for_dynamic_batches_and_lengths(exported, use_onednn):
    model, out = exported
    encoder = PredictorEncoder(out, cpu_threads=1, use_onednn=use_onednn)
    rng = np.random.default_rng(0)
    for batch, length, pads in [(1, 2, None), (3, 7, {1: 3}), (5, 48, {0: 5, 2: 30}), (2, 64, {1: 10}), (1, 1, None)]:
        ids = random_ids(rng, batch, length, pads)
        got = encoder.encode_text(ids)
        assert got.shape == (batch, 32)
        assert min_cos(got, eager_text(model, ids)) >= MIN_COS, (batch, length)
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
    for batch in (1, 4, 3):
        pixels = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        got = encoder.encode_image(pixels)
        assert got.shape == (batch, 32)
        assert min_cos(got, eager_image(model, pixels)) >= MIN_COS, batch
    # different inputs really give different embeddings, so the agreement above means something
    assert min_cos(encoder.encode_text(random_ids(rng, 1, 9)), encoder.encode_text(random_ids(rng, 1, 9))) < 0.99
    assert encoder.encode_text(np.zeros((0, 5), np.int64)).shape == (0, 32)


def test_padding_does_not_change_a_texts_embedding(exported):
    _, out = exported
    encoder = PredictorEncoder(out, cpu_threads=1)
    text = random_ids(np.random.default_rng(1), 1, 6)
    padded = np.zeros((2, 40), np.int64)
    padded[0, :6] = text[0]
    padded[1] = random_ids(np.random.default_rng(2), 1, 40)[0]  # a long neighbour forces the padding
    alone, batched = encoder.encode_text(text), encoder.encode_text(padded)
    assert min_cos(alone, batched[:1]) >= MIN_COS
    assert min_cos(batched[:1], batched[1:]) < 0.99


def test_the_cpu_predictor_sees_only_a_few_fixed_shapes(exported):
    # oneDNN keeps a reordered copy of a tower's weights per input shape (~350 MB each for Base), so on the CPU
    # every text batch becomes blocks of text_batch rows x a multiple of 16 tokens, and images go one by one.
    model, out = exported
    rng = np.random.default_rng(3)
    encoders = {"fixed": PredictorEncoder(out, cpu_threads=1, text_batch=4),
                "as given": PredictorEncoder(out, cpu_threads=1, fixed_shapes=False)}
    seen = {name: set() for name in encoders}
    for name, encoder in encoders.items():
        def recording_run(tower, array, run=encoder._run, log=seen[name]):
            log.add((tower, array.shape))
            return run(tower, array)
        encoder._run = recording_run
    for batch, length, pads in [(1, 2, None), (3, 7, {1: 3}), (4, 16, None), (5, 17, {4: 2}), (9, 33, {0: 30}),
                                (2, 48, {1: 1}), (6, 5, None)]:
        ids = random_ids(rng, batch, length, pads)
        want = eager_text(model, ids)
        for encoder in encoders.values():
            got = encoder.encode_text(ids)
            assert got.shape == (batch, 32) and min_cos(got, want) >= MIN_COS, (batch, length)
    for batch in (1, 3, 2):
        pixels = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
        want = eager_image(model, pixels)
        for encoder in encoders.values():
            assert min_cos(encoder.encode_image(pixels), want) >= MIN_COS, batch
    # a single text runs alone (one search query should not cost text_batch texts)
    assert seen["fixed"] == {("text", (1, 16)), ("text", (4, 16)), ("text", (4, 32)), ("text", (4, 48)),
                             ("image", (1, 3, 32, 32))}
    assert len(seen["as given"]) == 10  # every batch as it came: 7 text shapes and 3 image shapes
    assert PredictorEncoder(out, cpu_threads=1, use_onednn=False).fixed_shapes is False


def test_text_widths_are_few_for_any_max_length():
    from ernievil2.infer.predictor import TEXT_WIDTHS, fixed_text_width
    assert {fixed_text_width(w, 48) for w in range(1, 49)} == {16, 32, 48}
    assert {fixed_text_width(w, 100) for w in range(1, 101)} == {32, 64, 96, 100}
    assert {fixed_text_width(w, 512) for w in range(1, 513)} == {128, 256, 384, 512}
    for longest in range(1, 600):
        widths = [fixed_text_width(w, longest) for w in range(1, longest + 1)]
        assert len(set(widths)) <= TEXT_WIDTHS and all(w <= p <= longest for w, p in zip(range(1, longest + 1),
                                                                                         widths))
    assert fixed_text_width(60, 48) == 60  # wider than promised: passed through, never cut


def test_bad_inputs_are_refused_with_a_clear_message(exported):
    _, out = exported
    encoder = PredictorEncoder(out, cpu_threads=1)
    with pytest.raises(ValueError, match=r"text length 65 is outside 1\.\.64"):
        encoder.encode_text(np.ones((1, 65), np.int64))
    with pytest.raises(ValueError, match="integer token ids"):
        encoder.encode_text(np.ones((1, 5), np.float32))
    with pytest.raises(ValueError, match=r"token ids must lie in 0\.\.39999"):
        encoder.encode_text(np.full((1, 5), 40000, np.int64))
    with pytest.raises(ValueError, match=r"expected pixels \[batch, 3, 32, 32\], got \[2, 3, 224, 224\]"):
        encoder.encode_image(np.zeros((2, 3, 224, 224), np.float32))
    image_only = PredictorEncoder(out, cpu_threads=1, towers=("image",))
    with pytest.raises(ValueError, match="without the text tower"):
        image_only.encode_text(np.ones((1, 3), np.int64))
    with pytest.raises(ValueError, match="TensorRT and fp16 need device gpu"):
        PredictorEncoder(out, use_tensorrt=True)


def test_missing_or_foreign_model_dirs_get_errors_naming_them(exported, tmp_path):
    _, out = exported
    absent = str(tmp_path / "absent")
    with pytest.raises(InferenceModelError, match="inference model directory not found.*python -m ernievil2 export"):
        PredictorEncoder(absent)
    assert absent in str(pytest.raises(InferenceModelError, PredictorEncoder, absent).value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    with pytest.raises(InferenceModelError, match=re.escape(f"{foreign}: not an exported ERNIE-ViL 2.0 model")):
        PredictorEncoder(str(foreign))
    with pytest.raises(ValueError, match="refusing to replace it"):
        export_towers(make_tiny_model(), str(foreign))
    assert os.listdir(foreign) == ["notes.txt"]
    (foreign / META_FILE).write_text("{not json")
    with pytest.raises(InferenceModelError, match="not valid JSON"):
        PredictorEncoder(str(foreign))
    broken = tmp_path / "broken"
    broken.mkdir()
    meta = read_export_meta(out)
    meta["towers"]["text"]["params_file"] = "text/gone.pdiparams"
    (broken / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(InferenceModelError, match="tower file missing"):
        PredictorEncoder(str(broken), towers=("text",))
    with pytest.raises(ValueError, match="image_size 224 differs from the model's 32"):
        export_towers(make_tiny_model(), str(tmp_path / "new"), image_size=224)


def test_exporting_again_replaces_the_previous_export(tmp_path):
    out = str(tmp_path / "towers")
    first, second = spread(make_tiny_model(), seed=1), spread(make_tiny_model(), seed=2)
    ids = random_ids(np.random.default_rng(3), 2, 9)
    export_towers(first, out)
    export_towers(second, out)
    got = PredictorEncoder(out, cpu_threads=1, towers=("text",)).encode_text(ids)
    assert min_cos(got, eager_text(second, ids)) >= MIN_COS
    assert min_cos(got, eager_text(first, ids)) < 0.99
    assert sorted(os.listdir(tmp_path)) == ["towers"]


def write_infer_config(tmp_path, weights, vocab, test_file, **extra):
    text_config = tmp_path / "tiny_text.json"
    text_config.write_text(json.dumps(TINY_TEXT))
    cfg = {"device": "cpu", "vocab_file": vocab, "text_model_config": str(text_config), "test_file": test_file,
           "output_file": str(tmp_path / "out" / "emb.out"), "init_from_params": weights,
           "vision_model": dict(TINY_VISION), "image_size": TINY_VISION["image_size"], "num_workers": 0,
           "progress": False, "cpu_threads": 1, **extra}
    path = tmp_path / "infer.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_export_cli_then_run_infer_with_the_paddle_inference_engine(tmp_path, golden_dir, vocab_path, capsys):
    model = spread(make_tiny_model(), seed=5)
    weights = save_weights(model, str(tmp_path / "tiny.safetensors"))
    config = write_infer_config(tmp_path, weights, vocab_path, os.path.join(golden_dir, "golden.coco.tsv"),
                                inference_model_dir=str(tmp_path / "towers"))
    assert main([config]) == 0
    out = capsys.readouterr().out
    assert "exported the image and text towers" in out
    cosines = dict(re.findall(r"(image|text) ([0-9.]+)", out.split("smallest cosine:")[1]))
    assert set(cosines) == {"image", "text"} and all(float(v) >= MIN_COS for v in cosines.values()), out
    results = {}
    for engine in ("eager", "paddle_inference"):
        (tmp_path / engine).mkdir()
        cfg = load_infer_config(config, [f"engine={engine}", f"output_file={tmp_path / engine / 'emb.out'}"])
        summary = run_inference(cfg)
        assert summary.written == 16
        results[engine] = np.load(summary.also_written[0])
    for key in ("text", "image"):
        assert min_cos(results["eager"][key], results["paddle_inference"][key]) >= MIN_COS, key
    assert min_cos(results["eager"]["text"][:1], results["eager"]["text"][1:2]) < 0.99


def test_export_cli_errors_are_one_line(tmp_path, vocab_path, capsys):
    weights = save_weights(make_tiny_model(), str(tmp_path / "tiny.pdparams"))
    config = write_infer_config(tmp_path, weights, vocab_path, "unused.tsv")
    assert main([config]) == 2
    assert "inference_model_dir is not set" in capsys.readouterr().err
    assert main([config, "-o", f"inference_model_dir={tmp_path / 't'}", "-o",
                 f"init_from_params={tmp_path / 'gone.pdparams'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: init_from_params: file not found") and "Traceback" not in err
    assert main([config, "-o", f"inference_model_dir={tmp_path / 't'}", "-o", "image_size=64"]) == 2
    assert "image_size 64 differs from the model's 32" in capsys.readouterr().err


def test_onnx_export_agrees_with_eager(tmp_path, vocab_path, capsys, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator
    model = spread(make_tiny_model(), seed=6)
    weights = save_weights(model, str(tmp_path / "tiny.safetensors"))
    out = tmp_path / "towers"
    config = write_infer_config(tmp_path, weights, vocab_path, "unused.tsv", inference_model_dir=str(out))
    try:
        import paddle2onnx  # noqa: F401  (only whether it imports matters)
    except ImportError:
        assert main([config, "--onnx", "--no-verify"]) == 0
        assert "paddle2onnx is not installed" in capsys.readouterr().err
        return
    assert main([config, "--onnx", "--no-verify"]) == 0
    assert read_export_meta(str(out))["towers"]["text"]["onnx_file"] == "text/model.onnx"
    rng = np.random.default_rng(4)
    ids = random_ids(rng, 3, 10, {1: 4})
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    for tower, array, expected in (("text", ids, eager_text(model, ids)),
                                   ("image", pixels, eager_image(model, pixels))):
        path = str(out / tower / "model.onnx")
        onnx.checker.check_model(path)
        evaluator = ReferenceEvaluator(path)
        got = evaluator.run(None, {evaluator.input_names[0]: array})[0]
        assert min_cos(got.astype(np.float32), expected) >= MIN_COS, tower
    # without paddle2onnx the flag is skipped with a message, not a failure
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)
    assert main([config, "--onnx", "--no-verify"]) == 0
    assert "paddle2onnx is not installed" in capsys.readouterr().err


def test_full_size_golden_parity_through_paddle_inference_from_a_paddlenlp_layout_file(
        tmp_path, reference_checkpoint, golden_dir, vocab_path):
    """The deployment path end to end on the real Base model: a PaddleNLP-layout weights file (converted on load),
    `python -m ernievil2 export`, then run_infer.sh with engine paddle_inference (oneDNN), against the official
    release's golden embeddings."""
    pnlp = save_weights(to_paddlenlp(read_raw_state(reference_checkpoint)), str(tmp_path / "pnlp.safetensors"))
    out = tmp_path / "out" / "emb.out"
    out.parent.mkdir()
    config = tmp_path / "base.yaml"
    config.write_text(yaml.safe_dump({
        "device": "cpu", "vocab_file": vocab_path, "test_file": os.path.join(golden_dir, "golden.coco.tsv"),
        "text_model_config": os.path.join(REPO, "packages", "ernie_base_3.0", "ernie_config.base.json"),
        "output_file": str(out), "init_from_params": pnlp, "engine": "paddle_inference",
        "inference_model_dir": str(tmp_path / "towers"), "progress": False}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                     os.path.join(REPO, "packages")]))}
    export = subprocess.run([sys.executable, "-m", "ernievil2", "export", str(config)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    assert "PaddleNLP ErnieViLModel layout, converted" in export.stderr
    infer = subprocess.run(["bash", os.path.join(REPO, "run_infer.sh"), "cpu", str(config)], cwd=REPO,
                           capture_output=True, text=True, env=env, timeout=600)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert "rows read: 16, written: 16" in infer.stdout
    got = np.load(str(out.with_suffix(".npz")))
    rows = [line.rstrip("\n").split("\t") for line in open(os.path.join(golden_dir, "official_embeddings.out"))]
    for column, key in ((0, "text"), (1, "image")):
        ref = np.array([[float(x) for x in r[column].split()] for r in rows], np.float32)
        assert min_cos(got[key], ref) >= MIN_COS, key
    if not cpu_has_bf16():
        pytest.skip("this CPU has no AVX512-BF16/AMX: the opt-in bf16 precision is not checked here")
    # precision: bf16 (opt-in, approximate): oneDNN's bfloat16 kernels really run (the embeddings change) and stay
    # within cosine 0.9998 of the official ones (measured here: text 0.99989, image 0.99995).
    infer = subprocess.run(["bash", os.path.join(REPO, "run_infer.sh"), "cpu", str(config), "-o", "precision=bf16"],
                           cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert infer.returncode == 0, infer.stderr[-3000:]
    half = np.load(str(out.with_suffix(".npz")))
    for column, key in ((0, "text"), (1, "image")):
        ref = np.array([[float(x) for x in r[column].split()] for r in rows], np.float32)
        assert 0.9998 <= min_cos(half[key], ref) < 0.999999, key
        assert np.abs(half[key] - got[key]).max() > 1e-4, key


def test_bf16_precision_is_refused_where_it_cannot_run(exported, monkeypatch, tmp_path, golden_dir, vocab_path):
    _, model_dir = exported
    import ernievil2.runtime as cpu_runtime
    monkeypatch.setattr(cpu_runtime, "cpu_has_bf16", lambda: False)
    with pytest.raises(RuntimeSupportError, match="AVX512-BF16"):
        PredictorEncoder(model_dir, precision="bf16")
    monkeypatch.setattr(cpu_runtime, "cpu_has_bf16", lambda: True)
    with pytest.raises(RuntimeSupportError, match="needs oneDNN"):
        PredictorEncoder(model_dir, precision="bf16", use_onednn=False)
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import engine_options
    cfg = load_infer_config(None, [("test_file", "x"), ("output_file", "y"), ("init_from_params", "z"),
                                   ("vocab_file", "v"), ("device", "cpu"), ("engine", "eager"),
                                   ("precision", "bf16")])
    with pytest.raises(ValueError, match="precision bf16 is for engine paddle_inference or openvino on the CPU"):
        make_encoder(engine_options(cfg))
