"""Weights files: round trips in both formats, strict-loading errors that name keys, unusable files."""
import os
import pickle

import numpy as np
import paddle
import pytest

from conftest import make_tiny_model
from ernievil2.errors import CheckpointError
from ernievil2.interop.convert import read_state
from ernievil2.model.weights import load_weights, save_weights


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        np.testing.assert_array_equal(sa[name].numpy(), sb[name].numpy(), err_msg=name)


@pytest.mark.parametrize("ext", [".pdparams", ".safetensors"])
def test_save_then_load_round_trips_every_weight(tmp_path, ext):
    src, dst = make_tiny_model(seed=1), make_tiny_model(seed=2)
    path = save_weights(src, str(tmp_path / f"w{ext}"))
    report = load_weights(dst, path)
    assert report.ok and len(report.loaded) == len(src.state_dict())
    assert_same_weights(src, dst)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary file left behind"


def test_pdparams_is_a_plain_pickle_of_numpy_arrays_like_the_official_file(tmp_path):
    path = save_weights(make_tiny_model(), str(tmp_path / "w.pdparams"))
    with open(path, "rb") as f:
        state = pickle.load(f)  # no Paddle classes inside: the official code's paddle.load reads it as is
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    assert "contrastive_loss_mm.temperature_b" in state and "visual.blocks.1.attn.qkv.weight" in state
    loaded = paddle.load(path)
    assert set(loaded) == set(state)


def test_strict_loading_names_missing_unexpected_and_mismatched_keys(tmp_path):
    model = make_tiny_model()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    del state["text_model.pooler.bias"]
    state["visual.extra_head.weight"] = np.zeros((2, 2), np.float32)
    state["visual.norm_post.weight"] = np.zeros((7,), np.float32)
    path = save_weights(state, str(tmp_path / "bad.pdparams"))
    before = model.visual.norm_pre.weight.numpy().copy()
    with pytest.raises(CheckpointError) as err:
        load_weights(model, path)
    msg = str(err.value)
    assert path in msg
    assert "1 missing from the file: text_model.pooler.bias" in msg
    assert "1 unexpected in the file: visual.extra_head.weight" in msg
    assert "visual.norm_post.weight [7] vs [32]" in msg
    np.testing.assert_array_equal(model.visual.norm_pre.weight.numpy(), before)  # nothing loaded


def test_non_strict_loading_loads_what_fits_and_reports_the_rest(tmp_path):
    src, dst = make_tiny_model(seed=3), make_tiny_model(seed=4)
    state = {k: v.numpy() for k, v in src.state_dict().items() if k.startswith("visual.")}
    report = load_weights(dst, state, strict=False)
    assert report.missing and all(k.startswith(("text_model.", "contrastive")) for k in report.missing)
    np.testing.assert_array_equal(dst.visual.norm_post.weight.numpy(), src.visual.norm_post.weight.numpy())
    assert not np.array_equal(dst.text_model.pooler.weight.numpy(), src.text_model.pooler.weight.numpy())


def test_unusable_files_get_clear_errors(tmp_path):
    model = make_tiny_model()
    good = save_weights(model, str(tmp_path / "good.pdparams"))
    truncated = tmp_path / "truncated.pdparams"
    truncated.write_bytes(open(good, "rb").read()[:5000])
    text = tmp_path / "notes.pdparams"
    text.write_text("these are not weights\n")
    empty = tmp_path / "empty.pdparams"
    empty.write_bytes(b"")
    not_a_dict = tmp_path / "list.pdparams"
    with open(not_a_dict, "wb") as f:
        pickle.dump([1, 2, 3], f, protocol=4)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    cases = {str(truncated): "truncated", str(text): "not a Paddle checkpoint", str(empty): "empty file",
             str(not_a_dict): "not a checkpoint", str(bad_st): "safetensors",
             str(tmp_path / "absent.pdparams"): "not found", str(tmp_path): "is a directory"}
    for path, expected in cases.items():
        with pytest.raises(CheckpointError) as err:
            read_state(path)
        assert path in str(err.value) and expected in str(err.value), str(err.value)
