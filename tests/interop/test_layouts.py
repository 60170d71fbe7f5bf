"""Official <-> PaddleNLP weight conversion: lossless round trips, PaddleNLP's own ErnieViLModel reproducing our
embeddings (both directions), layout detection, refusals that name keys, safetensors, the pickle notice."""
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from conftest import REPO, TINY_TEXT, TINY_VISION, make_tiny_model, spread
from ernievil2.cli.convert import main
from ernievil2.errors import CheckpointError
from ernievil2.interop.convert import load_any_layout, read_state
from ernievil2.interop.layouts import (
    PADDLENLP_ONLY,
    convert_state,
    detect_layout,
    guess_layout,
    layer_counts,
    to_official,
    to_paddlenlp,
)
from ernievil2.model import weights as checkpoint
from ernievil2.model.configs import ModelConfig
from ernievil2.model.dual_encoder import ErnieViL2
from ernievil2.model.weights import (
    load_weights,
    read_raw_state,
    save_weights,
    state_arrays,
)

MIN_COS = 0.99999


def paddlenlp_model(vision=TINY_VISION, text=TINY_TEXT, seed=0):
    """PaddleNLP's ErnieViLModel configured like one of our models (None: PaddleNLP's defaults, i.e. Base)."""
    from paddlenlp.transformers import ErnieViLConfig, ErnieViLModel
    paddle.seed(seed)
    if vision is None:
        config = ErnieViLConfig()
    else:
        v = dict(vision)
        width = v["width"]
        config = ErnieViLConfig(
            vision_config=dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=v["layers"],
                               num_attention_heads=v["heads"], image_size=v["image_size"],
                               patch_size=v["patch_size"]),
            text_config=dict(vocab_size=text["vocab_size"], hidden_size=text["hidden_size"],
                             num_hidden_layers=text["num_hidden_layers"],
                             num_attention_heads=text["num_attention_heads"],
                             intermediate_size=4 * text["hidden_size"],
                             max_position_embeddings=text["max_position_embeddings"],
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model = ErnieViLModel(config)
    model.eval()
    return model


def sample_inputs(image_size, vocab=40000, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(4, vocab, (3, 11)).astype(np.int64)
    ids[:, 0] = 1
    ids[1, 6:] = 0  # a padded text
    ids[2, 3:] = 0
    pixels = rng.standard_normal((2, 3, image_size, image_size)).astype(np.float32)
    return ids, pixels


def ours(model, ids, pixels):
    with paddle.no_grad():
        return (model.encode_text(paddle.to_tensor(ids), normalize=True).numpy(),
                model.encode_image(paddle.to_tensor(pixels), normalize=True).numpy())


def theirs(model, ids, pixels):
    with paddle.no_grad():
        text = model.get_text_features(input_ids=paddle.to_tensor(ids))
        image = model.get_image_features(pixel_values=paddle.to_tensor(pixels))
        return F.normalize(text, axis=-1).numpy(), F.normalize(image, axis=-1).numpy()


def assert_same_embeddings(a, b):
    for x, y in zip(a, b):
        cos = (x * y).sum(-1)
        assert cos.min() >= MIN_COS, cos
    # the rows differ from each other, so agreement is not an accident of a degenerate model
    assert (a[0][0] * a[0][1]).sum() < 0.99 and (a[1][0] * a[1][1]).sum() < 0.99


def assert_bit_identical(a, b, ordered=True):
    """Same names (in the same order unless a safetensors file, which sorts them), dtypes, shapes and bytes."""
    assert (list(a) == list(b)) if ordered else (sorted(a) == sorted(b))
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name


def paddlenlp_state(model):
    return {k: v.numpy() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- layout facts and round trips

def test_tiny_round_trip_is_bit_identical_and_matches_paddlenlps_keys():
    state = state_arrays(make_tiny_model(seed=1))
    converted = to_paddlenlp(state)
    # 2 vision layers: each fused qkv weight and bias becomes three tensors
    assert len(converted) == len(state) + 2 * 4
    assert "visual.blocks.0.attn.qkv.weight" not in converted
    fused = state["visual.blocks.1.attn.qkv.weight"]  # [in, 3W], output columns laid out [q | k | v]
    for i, part in enumerate("qkv"):
        np.testing.assert_array_equal(converted[f"vision_model.transformer.layers.1.self_attn.{part}_proj.weight"],
                                      fused[:, 32 * i:32 * (i + 1)])
    assert converted["vision_model.class_embedding"].shape == (32,)
    assert converted["vision_model.positional_embedding.weight"].shape == (5, 32)
    assert converted["temperature"] is state["contrastive_loss_mm.temperature_b"]
    expected = {k: tuple(v.shape) for k, v in paddlenlp_model().state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected
    assert_bit_identical(to_official(converted), state)


def test_large_layout_layer_counts_come_from_the_keys():
    vision = {**TINY_VISION, "image_size": 28, "patch_size": 14, "layers": 24}
    text = {**TINY_TEXT, "num_hidden_layers": 24}
    paddle.seed(3)
    state = state_arrays(ErnieViL2(ModelConfig.build(vision, text)))
    converted = to_paddlenlp(state)
    assert layer_counts(state) == layer_counts(converted) == {"vision": 24, "text": 24}
    expected = {k: tuple(v.shape) for k, v in paddlenlp_model(vision, text).state_dict().items()}
    assert {k: v.shape for k, v in converted.items()} == expected
    assert_bit_identical(to_official(converted), state)


def test_full_size_reference_checkpoint_round_trip_and_paddlenlp_embeddings(reference_checkpoint):
    state = read_raw_state(reference_checkpoint)
    assert len(state) == 350 and detect_layout(state) == "official"
    converted = to_paddlenlp(state)
    theirs_model = paddlenlp_model(vision=None)  # PaddleNLP's default ErnieViLConfig: the Base model
    expected = {k: tuple(v.shape) for k, v in theirs_model.state_dict().items()}
    assert len(expected) == 398 and {k: v.shape for k, v in converted.items()} == expected
    assert_bit_identical(to_official(converted), state)
    theirs_model.set_state_dict({k: paddle.to_tensor(v) for k, v in converted.items()})
    del state, converted
    ours_model = ErnieViL2(ModelConfig.build("vit_b16", {"hidden_dropout_prob": 0.0,
                                                         "attention_probs_dropout_prob": 0.0}), initialize=False)
    load_weights(ours_model, reference_checkpoint)
    ours_model.eval()
    ids, pixels = sample_inputs(224)
    assert_same_embeddings(ours(ours_model, ids, pixels), theirs(theirs_model, ids, pixels))


# ---------------------------------------------------------------- PaddleNLP's model reproduces ours, both ways

def test_paddlenlp_model_with_our_converted_weights_gives_our_embeddings():
    model = spread(make_tiny_model(), seed=5)
    target = paddlenlp_model(seed=99)
    ids, pixels = sample_inputs(32)
    before = theirs(target, ids, pixels)
    missing, unexpected = target.set_state_dict({k: paddle.to_tensor(v)
                                                 for k, v in to_paddlenlp(state_arrays(model)).items()})
    assert not missing and not unexpected
    expected = ours(model, ids, pixels)
    assert (before[0] * expected[0]).sum(-1).min() < 0.9  # the load is what makes them agree
    assert_same_embeddings(expected, theirs(target, ids, pixels))


def test_our_model_with_converted_paddlenlp_weights_gives_paddlenlps_embeddings():
    source = spread(paddlenlp_model(), seed=7)
    ids, pixels = sample_inputs(32)
    model = make_tiny_model(seed=0)
    report = load_weights(model, to_official(paddlenlp_state(source)))
    assert report.ok
    assert_same_embeddings(theirs(source, ids, pixels), ours(model, ids, pixels))


def test_paddlenlp_from_pretrained_reads_our_converted_safetensors(tmp_path):
    """End to end through PaddleNLP's own loader: save_pretrained's layout, our file."""
    from paddlenlp.transformers import ErnieViLModel
    model = spread(make_tiny_model(), seed=8)
    template = paddlenlp_model(seed=1)
    template.config.save_pretrained(str(tmp_path))
    assert main(["--to", "paddlenlp", save_weights(model, str(tmp_path / "ours.pdparams")),
                 str(tmp_path / "model.safetensors")]) == 0
    loaded = ErnieViLModel.from_pretrained(str(tmp_path))
    loaded.eval()
    ids, pixels = sample_inputs(32)
    assert_same_embeddings(ours(model, ids, pixels), theirs(loaded, ids, pixels))


def test_a_paddlenlp_save_pretrained_directory_converts_and_loads(tmp_path):
    source = spread(paddlenlp_model(), seed=4)
    source.save_pretrained(str(tmp_path / "pnlp"))
    out = str(tmp_path / "official.safetensors")
    assert main(["--to", "official", str(tmp_path / "pnlp"), out]) == 0
    model = make_tiny_model(seed=0)
    assert load_weights(model, out).ok
    ids, pixels = sample_inputs(32)
    assert_same_embeddings(theirs(source, ids, pixels), ours(model, ids, pixels))


# ---------------------------------------------------------------- detection and refusals

def test_detection_of_both_layouts_prefixes_and_partial_states():
    state = state_arrays(make_tiny_model())
    converted = to_paddlenlp(state)
    assert detect_layout(state) == "official" and detect_layout(converted) == "paddlenlp"
    prefixed = {f"ernie_vil.{k}": v for k, v in converted.items()}
    assert detect_layout(prefixed) == "paddlenlp"
    assert_bit_identical(to_official(prefixed), state)
    vision_only = {k: v for k, v in converted.items() if k.startswith("vision_model.")}
    assert detect_layout(vision_only) == "paddlenlp"
    assert set(to_official(vision_only)) == {k for k in state if k.startswith("visual.")}
    assert detect_layout({"temperature": np.zeros(1, np.float32)}) == "paddlenlp"


def test_unknown_and_mixed_layouts_are_refused_with_the_source_named():
    with pytest.raises(CheckpointError) as err:
        detect_layout({"conv1.weight": np.zeros(3), "fc.bias": np.zeros(2)}, source="resnet.pdparams")
    msg = str(err.value)
    assert "resnet.pdparams" in msg and "not ERNIE-ViL 2.0 weights" in msg and "conv1.weight" in msg
    state = state_arrays(make_tiny_model())
    mixed = {**state, "vision_model.ln_post.weight": state["visual.norm_post.weight"]}
    with pytest.raises(CheckpointError, match="mixes keys"):
        to_paddlenlp(mixed)
    assert guess_layout(mixed) is None
    with pytest.raises(ValueError, match="unknown target layout"):
        convert_state(state, "onnx")


def test_keys_without_counterpart_are_named_never_silently_dropped(library_log):
    source = paddlenlp_state(paddlenlp_model())
    extra = {**source, PADDLENLP_ONLY[0]: np.zeros((2, 32), np.float32)}
    with pytest.raises(CheckpointError) as err:
        to_official(extra, source="ft.pdparams")
    msg = str(err.value)
    assert "ft.pdparams" in msg and PADDLENLP_ONLY[0] in msg and "PaddleNLP-only" in msg
    assert "--drop-unknown" in msg
    converted = to_official(extra, drop_unknown=True, source="ft.pdparams")
    assert any(PADDLENLP_ONLY[0] in m for m in library_log.messages)  # a warning lists what was dropped on request
    assert set(converted) == set(state_arrays(make_tiny_model()))
    state = state_arrays(make_tiny_model())
    state["visual.head.weight"] = np.zeros((2, 2), np.float32)
    with pytest.raises(CheckpointError, match="visual.head.weight"):
        to_paddlenlp(state)


def test_broken_qkv_and_embedding_shapes_are_refused():
    source = paddlenlp_state(paddlenlp_model())
    no_k = dict(source)
    del no_k["vision_model.transformer.layers.1.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointError, match=r"vision layer 1: missing .*layers\.1\.self_attn\.k_proj\.weight"):
        to_official(no_k)
    state = state_arrays(make_tiny_model())
    state["visual.blocks.0.attn.qkv.bias"] = np.zeros(95, np.float32)
    with pytest.raises(CheckpointError, match="multiple of 3"):
        to_paddlenlp(state)
    state = state_arrays(make_tiny_model())
    state["visual.class_embedding"] = np.zeros((2, 1, 32), np.float32)
    with pytest.raises(CheckpointError, match="visual.class_embedding has shape"):
        to_paddlenlp(state)


# ---------------------------------------------------------------- files: loading either layout, CLI, notice

@pytest.mark.parametrize("ext", [".pdparams", ".safetensors"])
def test_loading_a_paddlenlp_layout_file_converts_on_the_fly(tmp_path, ext, library_log):
    model = make_tiny_model(seed=2)
    path = save_weights(to_paddlenlp(state_arrays(model)), str(tmp_path / f"pnlp{ext}"))
    assert detect_layout(read_raw_state(path)) == "paddlenlp"
    assert_bit_identical(read_state(path), state_arrays(model), ordered=ext == ".pdparams")
    other = make_tiny_model(seed=3)
    assert load_any_layout(other, path).ok
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[name].numpy(), value.numpy(), err_msg=name)
    assert any("PaddleNLP ErnieViLModel layout" in m for m in library_log.messages)


def test_convert_cli_round_trip_and_safetensors(tmp_path, capsys):
    state = state_arrays(make_tiny_model(seed=4))
    src = save_weights(state, str(tmp_path / "ours.pdparams"))
    pnlp = str(tmp_path / "pnlp.pdparams")
    back = str(tmp_path / "back.safetensors")
    assert main(["--to", "paddlenlp", src, pnlp]) == 0
    out = capsys.readouterr().out
    assert "official layout" in out and "paddlenlp layout, 78 tensors, 2 vision + 2 text layers" in out
    assert main(["--to", "official", pnlp, back]) == 0
    assert_bit_identical(read_raw_state(back), state, ordered=False)
    safe = str(tmp_path / "pnlp.safetensors")
    assert main(["--to", "safetensors", pnlp, safe]) == 0  # keeps the layout, drops the pickle
    assert_bit_identical(read_raw_state(safe), read_raw_state(pnlp), ordered=False)
    with open(safe, "rb") as f:
        assert b'"format":"np"' in f.read(20000)  # PaddleNLP's loader requires this header entry
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")], "temporary file left behind"


def test_convert_cli_errors_are_one_line_and_exit_2(tmp_path, capsys):
    src = save_weights(make_tiny_model(), str(tmp_path / "ours.pdparams"))
    junk = save_weights({"conv.weight": np.zeros(3, np.float32)}, str(tmp_path / "junk.safetensors"))
    cases = [(["--to", "paddlenlp", src, str(tmp_path / "out.bin")], "must end in .pdparams or .safetensors"),
             (["--to", "safetensors", src, str(tmp_path / "x.pdparams")], "writes a .safetensors file"),
             (["--to", "official", str(tmp_path / "absent.pdparams"), str(tmp_path / "o.pdparams")], "not found"),
             (["--to", "paddlenlp", junk, str(tmp_path / "o.pdparams")], "not ERNIE-ViL 2.0 weights"),
             (["--to", "paddlenlp", src, src], "overwrite the input"),
             (["--to", "official", str(tmp_path), str(tmp_path / "o.pdparams")], "is a directory without")]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and expected in err and "Traceback" not in err, err
    assert not os.path.exists(tmp_path / "o.pdparams")


def test_python_dash_m_entry_points(tmp_path):
    src = save_weights(make_tiny_model(), str(tmp_path / "ours.pdparams"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"),
                                                                     os.path.join(REPO, "packages")]))}
    run = subprocess.run([sys.executable, "-m", "ernievil2", "convert", "--to", "paddlenlp", src,
                          str(tmp_path / "p.safetensors")], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert detect_layout(read_raw_state(str(tmp_path / "p.safetensors"))) == "paddlenlp"
    # a .pdparams input prints the pickle notice exactly once per process
    assert run.stderr.count("pickles; load them only from sources you trust") == 1
    from ernievil2.cli.main import main as dispatch
    assert dispatch(["convert", "--to", "official", str(tmp_path / "p.safetensors"),
                     str(tmp_path / "o.pdparams")]) == 0


def test_pickle_notice_is_logged_once_and_only_for_pdparams(tmp_path, library_log, monkeypatch):
    monkeypatch.setattr(checkpoint, "_pickle_notice_shown", False)
    model = make_tiny_model()
    safe = save_weights(model, str(tmp_path / "w.safetensors"))
    read_state(safe)
    assert not any("pickle" in m for m in library_log.messages)
    pd = save_weights(model, str(tmp_path / "w.pdparams"))
    read_state(pd)
    read_state(pd)
    load_weights(make_tiny_model(), pd)
    assert library_log.messages.count(checkpoint.PICKLE_NOTICE) == 1
    assert "python -m ernievil2 convert --to safetensors" in checkpoint.PICKLE_NOTICE
