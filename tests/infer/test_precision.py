"""Precision modes on the CPU: fp32 engines reproduce the official embeddings; bf16 and int8 stay within their
documented bars of fp32 (skipped without AVX512-BF16/AMX, AMX-INT8/AVX512-VNNI); a mode this CPU cannot run, or
whose fidelity fails, is refused with a clear message; `auto` picks a passing mode; the bf16 paths see bounded input
shapes; the OpenVINO engine keeps its compiled towers and never imports Paddle."""
import os

import numpy as np
import pytest

from conftest import make_tiny_model
from ernievil2.errors import InputError, RuntimeSupportError
from ernievil2.infer import fidelity
from ernievil2.runtime import cpu_has_bf16, cpu_has_int8

openvino = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install -e \".[openvino]\")")
NEEDS_BF16 = pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has neither AVX512-BF16 nor AMX-BF16")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    from conftest import spread
    from ernievil2.interop.export import export_towers
    out = str(tmp_path_factory.mktemp("ov") / "towers")
    export_towers(spread(make_tiny_model(seed=8)), out)
    return out


def encoders(model_dir, engine, precision):
    if engine == "openvino":
        from ernievil2.infer.openvino_engine import OpenVinoEncoder
        return OpenVinoEncoder(model_dir, precision=precision, cpu_threads=1)
    from ernievil2.infer.predictor import PredictorEncoder
    return PredictorEncoder(model_dir, precision=precision, cpu_threads=1)


def test_openvino_fp32_equals_paddle_inference(tiny_export):
    pixels, ids = fidelity.probe_inputs(32, 40000, seed=5)
    a, b = encoders(tiny_export, "openvino", "fp32"), encoders(tiny_export, "paddle_inference", "fp32")
    for name, data in (("image", pixels), ("text", ids)):
        x, y = getattr(a, f"encode_{name}")(data), getattr(b, f"encode_{name}")(data)
        assert x.shape == y.shape and (x * y).sum(1).min() >= 0.99999, name
    assert a.logit_scale == pytest.approx(b.logit_scale)


@NEEDS_BF16
@pytest.mark.parametrize("engine", ["openvino", "paddle_inference"])
def test_bf16_is_within_its_bar_of_fp32(tiny_export, engine):
    bf16, fp32 = encoders(tiny_export, engine, "bf16"), encoders(tiny_export, engine, "fp32")
    cosine = fidelity.lowest_cosine(bf16, fp32, 32, 40000)
    assert fidelity.FIDELITY_BAR["bf16"] <= cosine < 1.0  # close to fp32, and really bf16 (not exactly fp32)


def test_modes_are_refused_where_they_cannot_run_or_fail_their_bar(tiny_export, monkeypatch, tmp_path):
    import ernievil2.runtime as runtime
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import EngineOptions
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda *a: False)  # a CPU without bf16
    with pytest.raises(RuntimeSupportError, match="AVX512-BF16"):
        encoders(tiny_export, "paddle_inference", "bf16")
    options = EngineOptions(inference_model_dir=tiny_export, device="cpu", engine="paddle_inference",
                            precision="auto", image_size=32)
    assert make_encoder(options).precision == "fp32"  # auto on such a CPU: fp32
    # a CPU with bf16 whose bf16 results fail the bar (simulated with an impossible bar): refused, auto falls back
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda *a: True)
    monkeypatch.setattr(fidelity, "FIDELITY_BAR", {"bf16": 1.5})
    monkeypatch.setattr(fidelity, "cpu_signature", lambda: "simulated")
    for engine in ("openvino", "paddle_inference"):
        with pytest.raises(RuntimeSupportError, match=r"precision bf16 with engine .* below the bar of 1.5"):
            make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", engine=engine,
                                       precision="bf16", image_size=32))
    assert make_encoder(options).precision == "fp32"


@NEEDS_BF16
def test_auto_picks_a_passing_bf16_mode(tiny_export):
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import EngineOptions
    encoder = make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", precision="auto",
                                         image_size=32))
    assert encoder.precision == "bf16" and type(encoder).__name__ == "OpenVinoEncoder"
    import json
    import os
    verdicts = json.load(open(os.path.join(tiny_export, "fidelity.json")))
    assert any(k.startswith("openvino/bf16/") and v >= fidelity.FIDELITY_BAR["bf16"] for k, v in verdicts.items())


def test_openvino_sees_text_widths_in_steps_of_eight(tiny_export):
    from ernievil2.infer.openvino_engine import WIDTH_STEP
    encoder = encoders(tiny_export, "openvino", "bf16" if cpu_has_bf16() else "fp32")
    seen = set()
    run = encoder._run

    def recording(tower, array):
        seen.add((tower, array.shape))
        return run(tower, array)
    encoder._run = recording
    rng = np.random.default_rng(0)
    for length in range(3, 40, 3):
        ids = rng.integers(5, 30000, (3, length))
        ids[:, 0] = 1
        encoder.encode_text(ids)
    widths = {shape[1] for tower, shape in seen if tower == "text"}
    assert widths == {8, 16, 24, 32, 40} and all(w % WIDTH_STEP == 0 for w in widths)


def test_openvino_keeps_compiled_towers_and_forgets_those_of_replaced_files(tiny_export, tmp_path):
    import shutil

    from ernievil2.infer.openvino_engine import CACHE_SUBDIR
    model_dir = str(tmp_path / "towers")
    shutil.copytree(tiny_export, model_dir, ignore=shutil.ignore_patterns(CACHE_SUBDIR))
    cache = os.path.join(model_dir, CACHE_SUBDIR)
    ids = np.array([[1, 50, 60, 70, 2]])

    def folders():
        return {name: sorted(os.listdir(os.path.join(cache, name))) for name in os.listdir(cache)}
    first = encoders(model_dir, "openvino", "fp32").encode_text(ids)
    before = folders()
    assert len(before) == 2 and all(before.values()), before  # one per tower, each holding a compiled blob
    assert np.array_equal(encoders(model_dir, "openvino", "fp32").encode_text(ids), first)  # loaded, not compiled
    assert folders() == before
    text_model = os.path.join(model_dir, "text", "model.onnx")
    st = os.stat(text_model)
    os.utime(text_model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # as a re-export would leave it
    encoders(model_dir, "openvino", "fp32")
    after = folders()
    assert len(after) == 2 and len(set(after) & set(before)) == 1  # the text tower's old folder is gone
    shutil.rmtree(cache)
    with open(cache, "w") as f:  # a folder that cannot be created: the towers are compiled every time instead
        f.write("not a folder")
    assert np.array_equal(encoders(model_dir, "openvino", "fp32").encode_text(ids), first)


def test_the_openvino_engine_never_imports_paddle(tiny_export):
    """Importing Paddle is seconds of every start; OpenVINO needs none of it."""
    import subprocess
    import sys
    code = ("import sys, numpy as np\n"
            "from ernievil2.infer.engines import make_encoder\n"
            "from ernievil2.infer.options import EngineOptions\n"
            f"e = make_encoder(EngineOptions(inference_model_dir={tiny_export!r}, device='cpu', engine='openvino',"
            " image_size=32))\n"
            "e.encode_text(np.array([[1, 50, 2]])); e.encode_image(np.zeros((1, 3, 32, 32), np.float32))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('paddle', 'nncf')))\n")
    packages = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "packages")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": packages})
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


# ------------------------------------------------------------------------------------------------------ int8

NEEDS_INT8 = pytest.mark.skipif(not cpu_has_int8(), reason="this CPU has neither AMX-INT8 nor AVX512-VNNI")


def calibration_tsv(path, rows=24):
    """Rows like the user's data: short Chinese captions and small photos-like images (smooth colour fields with a
    shape), a few images shared by two captions."""
    import base64

    import cv2
    rng = np.random.default_rng(3)
    words = ["红色", "蓝色", "一只", "小狗", "汽车", "停在", "路边", "草地", "上", "奔跑", "的", "猫", "天空"]
    lines = []
    for i in range(rows):
        image_id = i - i % 2 if i < 8 else i  # rows 0-7: pairs of captions share an image
        r = np.random.default_rng(image_id)
        img = np.clip(np.linspace(0, 255, 48)[None, :, None] * r.uniform(0.2, 1, 3) + r.uniform(0, 60, 3), 0, 255)
        img = np.repeat(img, 40, axis=0).astype(np.uint8)
        colour = tuple(int(v) for v in r.integers(0, 255, 3))
        cv2.circle(img, (int(r.integers(8, 40)), int(r.integers(8, 32))), 7, colour, -1)
        b64 = base64.b64encode(cv2.imencode(".jpg", img)[1].tobytes()).decode()
        caption = "".join(rng.choice(words, int(rng.integers(2, 9))))
        lines.append(f"{caption}\t{image_id}\t{b64}\n")
    lines.insert(5, "a broken row without columns\n")  # calibration skips what it cannot read
    path.write_text("".join(lines), encoding="utf-8")
    return str(path)


def calibration_options(tsv, rows=24):
    from conftest import VOCAB, need_shared
    from ernievil2.infer.options import CalibrationOptions
    need_shared(VOCAB)
    return CalibrationOptions(files=tsv, rows=rows, vocab_file=VOCAB, max_text_len=48, image_size=32)


@NEEDS_INT8
def test_int8_is_quantised_once_within_its_bar_of_fp32_and_auto_picks_it(tiny_export, tmp_path, monkeypatch):
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install -e \".[int8]\")")
    from ernievil2.infer import quantize
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import EngineOptions
    calibration = calibration_options(calibration_tsv(tmp_path / "calib.tsv"))
    samples = quantize.calibration_samples([calibration.files], 24, calibration.vocab_file,
                                           48, 32, 10 ** 6)
    assert len(samples["text"]) == 24 and len(samples["image"]) == 20  # the bad row skipped, shared images once
    assert all(ids.shape[1] % 8 == 0 and ids[0, 0] == 1 for ids in samples["text"])
    int8 = quantize.int8_encoder(tiny_export, calibration, cpu_threads=1)
    xml = open(os.path.join(tiny_export, "int8", int8.variant, "text.xml"), encoding="utf-8").read()
    assert xml.count('type="FakeQuantize"') >= 8  # the linear layers really are quantised
    cosine = fidelity.lowest_cosine(int8, encoders(tiny_export, "openvino", "fp32"), 32, 40000)
    assert fidelity.FIDELITY_BAR["int8"] <= cosine < 0.99999
    # the second use reads the cache: quantising again would fail here
    monkeypatch.setattr(quantize, "_quantize", lambda *a: pytest.fail("quantised twice"))
    again = quantize.int8_encoder(tiny_export, calibration, cpu_threads=1)
    pixels, ids = fidelity.probe_inputs(32, 40000, seed=9)
    np.testing.assert_array_equal(again.encode_text(ids), int8.encode_text(ids))
    encoder = make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", precision="auto",
                                         image_size=32, calibration=calibration))
    assert encoder.precision == "int8" and encoder.variant == int8.variant


def test_int8_is_refused_without_the_instructions_or_calibration_data(tiny_export, tmp_path, monkeypatch):
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install -e \".[int8]\")")
    import ernievil2.runtime as runtime
    from ernievil2.errors import ConfigError
    from ernievil2.infer.engines import make_encoder
    from ernievil2.infer.options import CalibrationOptions, EngineOptions
    from ernievil2.infer.quantize import int8_encoder
    monkeypatch.setattr(runtime, "cpu_has_int8", lambda *a: True)
    with pytest.raises(ConfigError, match="precision int8 needs calibration data: set calibration_file"):
        make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", precision="int8", image_size=32,
                                   calibration=CalibrationOptions(files=None)))
    with pytest.raises(ConfigError, match="precision int8 is for engine openvino on the CPU"):
        make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", engine="paddle_inference",
                                   precision="int8", image_size=32))
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda *a: False)
    missing = calibration_options(str(tmp_path / "x.tsv"))  # e.g. the placeholder test_file of a query config
    auto = make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", precision="auto", image_size=32,
                                      calibration=missing))
    assert auto.precision == "fp32"  # auto passes over int8 without calibration data instead of failing
    with pytest.raises(InputError, match="x.tsv: calibration_file not found"):
        make_encoder(EngineOptions(inference_model_dir=tiny_export, device="cpu", precision="int8", image_size=32,
                                   calibration=missing))
    monkeypatch.setattr(runtime, "cpu_has_int8", lambda *a: False)  # a CPU without AMX-INT8 / AVX512-VNNI
    with pytest.raises(RuntimeSupportError, match="AMX-INT8 or AVX512-VNNI"):
        int8_encoder(tiny_export, calibration_options(str(tmp_path / "x.tsv")))


@NEEDS_INT8
def test_run_infer_int8_calibrates_on_its_test_file_by_default(tiny, tmp_path, monkeypatch, library_log):
    pytest.importorskip("nncf", reason="NNCF is not installed (pip install -e \".[int8]\")")
    from ernievil2.infer.options import load_infer_config
    from ernievil2.infer.run import run_inference
    monkeypatch.setenv("ERNIEVIL2_CACHE", str(tmp_path / "cache"))
    tsv = calibration_tsv(tmp_path / "data.tsv", rows=12)
    out = {}
    for precision in ("fp32", "int8"):
        values = {**tiny, "test_file": tsv, "engine": "openvino", "precision": precision, "on_bad_row": "skip",
                  "output_file": str(tmp_path / precision / "emb.out")}
        run_inference(load_infer_config(None, list(values.items())))
        out[precision] = np.load(str(tmp_path / precision / "emb.npz"))
    assert any(f"calibrated on 12 texts and 8 images of {tsv}" in m for m in library_log.messages)
    for key in ("text", "image"):
        cos = (out["int8"][key].astype(np.float64) * out["fp32"][key]).sum(1)
        assert len(cos) == 12 and cos.min() >= fidelity.FIDELITY_BAR["int8"], key
        assert not np.array_equal(out["int8"][key], out["fp32"][key]), key  # the int8 models really ran
