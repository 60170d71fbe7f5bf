"""Shared fixtures: where ../shared lives, and the seed-7 reference checkpoint written once per session."""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

# Exported inference models (engine auto/paddle_inference) go to a per-session cache, not ~/.cache; the session
# removes it when it ends (the exported Base towers alone take about 1.6 GB).
_SESSION_CACHE = None
if "ERNIEVIL2_CACHE" not in os.environ:
    _SESSION_CACHE = os.environ["ERNIEVIL2_CACHE"] = tempfile.mkdtemp(prefix="ernievil2_test_cache_")


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_CACHE:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("ERNIEVIL2_SHARED", os.path.join(os.path.dirname(REPO), "shared"))
REFERENCE = os.path.join(SHARED, "reference")
GOLDEN = os.path.join(REFERENCE, "golden")
VOCAB = os.path.join(SHARED, "ernie_base_3.0", "vocab.txt")


def need_shared(path):
    """Skip (with the reason spelled out) when a piece of ../shared reference data is absent."""
    if not os.path.exists(path):
        pytest.skip(f"reference data not found at {path} (place the project's shared/ folder beside the repo "
                    f"or set ERNIEVIL2_SHARED)")
    return path


@pytest.fixture(scope="session")
def vocab_path():
    return need_shared(VOCAB)


@pytest.fixture(scope="session")
def golden_dir():
    return need_shared(GOLDEN)


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory):
    """The official-layout seed-7 checkpoint the golden outputs were made with (about 815 MB, a few seconds)."""
    script = need_shared(os.path.join(REFERENCE, "make_reference_checkpoint.py"))
    out = tmp_path_factory.mktemp("ref") / "ref7.pdparams"
    subprocess.run([sys.executable, script, "--seed", "7", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return str(out)


# A tiny dual encoder with the real vocabulary size: the same code as Base, small enough for second-long tests.
TINY_VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "heads": 2}
TINY_TEXT = {"vocab_size": 40000, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": 64, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def make_tiny_model(seed=0, **text_overrides):
    import paddle

    from ernievil2.model.configs import ModelConfig
    from ernievil2.model.dual_encoder import ErnieViL2
    paddle.seed(seed)
    model = ErnieViL2(ModelConfig.build(dict(TINY_VISION), {**TINY_TEXT, **text_overrides}))
    model.eval()
    return model


def spread(model, seed=0):
    """Give a tiny model weights of unit-scale activations: at the small init scale every text maps to nearly the
    same embedding, and a check that two implementations agree would prove little."""
    import paddle
    rng = np.random.default_rng(seed)
    with paddle.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if name.endswith("temperature_b") or name == "temperature":
                continue
            if "norm" in name or ".ln" in name or "layer_norm" in name:
                value = (1.0 if name.endswith("weight") else 0.0) + rng.normal(0, 0.1, shape)
            elif name.endswith("bias"):
                value = rng.normal(0, 0.1, shape)
            elif "emb" in name and len(shape) != 4:  # not the patch conv (visual.patch_embed.proj)
                value = rng.normal(0, 1.0, shape)
            else:  # Linear [in, out] and the patch conv [out, in, k, k]
                fan_in = shape[0] if len(shape) == 2 else int(np.prod(shape[1:]))
                value = rng.normal(0, fan_in ** -0.5, shape)
            p.set_value(value.astype(np.float32))
    return model


@pytest.fixture
def tiny(tmp_path):
    """Inference-config overrides that point at a tiny model saved in tmp_path (the real vocabulary)."""
    import json

    from ernievil2.model.weights import save_weights
    need_shared(VOCAB)
    weights = save_weights(make_tiny_model(seed=5), str(tmp_path / "tiny.pdparams"))
    text_json = tmp_path / "tiny_text.json"
    text_json.write_text(json.dumps(TINY_TEXT))
    return {"vocab_file": VOCAB, "init_from_params": weights, "text_model_config": str(text_json),
            "vision_model": dict(TINY_VISION), "image_size": 32, "device": "cpu", "progress": False,
            "num_workers": 0, "output_file": str(tmp_path / "out" / "emb.out")}


@pytest.fixture
def library_log(caplog):
    """caplog with the package's records (INFO and up), also after a command run earlier in this process
    stopped them from reaching the root logger (cli.common.show_library_logs)."""
    import logging
    package = logging.getLogger("ernievil2")
    propagate, level = package.propagate, package.level
    package.propagate = False  # caught once, by the handler below
    package.setLevel(logging.INFO)
    package.addHandler(caplog.handler)
    yield caplog
    package.removeHandler(caplog.handler)
    package.propagate = propagate
    package.setLevel(level)


# ---- the demo's colours, whose truth the generator knows (tagger tests) --------------------------------------
def write_colour_vocabulary(path):
    """A tag vocabulary of the demo's eight colours (红色 ... 黑色)."""
    from ernievil2.data.demo import COLOURS
    with open(path, "w", encoding="utf-8") as f:
        f.write("# the demo's colours\n" + "".join(f"{name}色\n" for name in COLOURS))
    return str(path)


def colour_truth(tsv):
    """image_id -> the colours of its object groups, from a demo TSV's tags column (colour + shape, e.g. 红色圆形)."""
    from ernievil2.data.prompts import split_tags
    from ernievil2.data.tsv import read_rows
    return {row.image_id: sorted({tag[:2] for tag in split_tags(row.tags)}) for row in read_rows(tsv)}
