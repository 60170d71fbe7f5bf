"""Precision modes on the CPU: fp32 engines reproduce the official embeddings; bf16 stays within its documented
bar of fp32 (skipped without AVX512-BF16/AMX); a mode this CPU cannot run, or whose fidelity fails, is refused
with a clear message; `auto` picks a passing mode; the bf16 paths see bounded input shapes."""
import numpy as np
import pytest

from conftest import make_tiny_model
from ernievil2.errors import RuntimeSupportError
from ernievil2.infer import fidelity
from ernievil2.runtime import cpu_has_bf16

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
    monkeypatch.setattr("ernievil2.infer.engines.cpu_has_bf16", lambda *a: False)
    assert make_encoder(options).precision == "fp32"  # auto on such a CPU: fp32
    # a CPU with bf16 whose bf16 results fail the bar (simulated with an impossible bar): refused, auto falls back
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda *a: True)
    monkeypatch.setattr("ernievil2.infer.engines.cpu_has_bf16", lambda *a: True)
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
