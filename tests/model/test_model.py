"""The dual encoder: official key layout, padding independence, Large shapes, temperature."""
import math
import os

import numpy as np
import paddle
import pytest

from conftest import REFERENCE, make_tiny_model, need_shared
from ernievil2.errors import ConfigError
from ernievil2.model.configs import ModelConfig
from ernievil2.model.dual_encoder import ErnieViL2

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_JSON = os.path.join(REPO, "packages", "ernie_base_3.0", "ernie_config.base.json")
LARGE_JSON = os.path.join(REPO, "packages", "ernie_base_3.0", "ernie_config.large.json")


def shapes_of(model):
    return {name: list(t.shape) for name, t in model.state_dict().items()}


def test_base_model_has_exactly_the_official_keys_and_shapes():
    layout_file = need_shared(os.path.join(REFERENCE, "official_state_dict_keys.txt"))
    official = {}
    with open(layout_file, encoding="utf-8") as f:
        for line in f:
            name, shape = line.strip().split(" ", 1)
            official[name] = [int(x) for x in shape.strip("[]").split(",")]
    with paddle.LazyGuard():  # shapes only: no 800 MB of initialisation
        model = ErnieViL2(ModelConfig.build("vit_b16", BASE_JSON), initialize=False)
    assert shapes_of(model) == official


def test_large_configs_have_the_large_shapes():
    with paddle.LazyGuard():
        model = ErnieViL2(ModelConfig.build("vit_l14", LARGE_JSON), initialize=False)
    shapes = shapes_of(model)
    assert shapes["visual.patch_embed.proj.weight"] == [1024, 3, 14, 14]
    assert shapes["visual.positional_embedding"] == [1, 257, 1024]
    assert shapes["visual.blocks.23.attn.qkv.weight"] == [1024, 3072]
    assert "visual.blocks.24.norm1.weight" not in shapes
    assert shapes["text_model.encoder_stack.block.23.ffn.i.weight"] == [1024, 4096]
    assert "text_model.encoder_stack.block.24.ln1.weight" not in shapes
    assert shapes["text_model.pooler.weight"] == [1024, 1024]
    assert model.config.text.num_attention_heads == 16 and model.config.vision.heads == 16


def test_mismatched_tower_widths_are_rejected():
    with pytest.raises(ValueError, match="vision width 1024 differs from text hidden_size 768"):
        ModelConfig.build("vit_l14", BASE_JSON)


def test_unknown_vision_keys_and_presets_are_named():
    with pytest.raises(ValueError, match="unknown key.*widht"):
        ModelConfig.build({"preset": "vit_b16", "widht": 3})
    with pytest.raises(ValueError, match="unknown preset 'vit_h14'"):
        ModelConfig.build("vit_h14")


def test_text_embedding_does_not_depend_on_padding():
    model = make_tiny_model()
    ids = np.array([[1, 50, 60, 70, 2]], dtype="int64")
    padded = np.concatenate([ids, np.zeros((1, 20), "int64")], axis=1)
    with paddle.no_grad():
        a = model.encode_text(paddle.to_tensor(ids)).numpy()
        b = model.encode_text(paddle.to_tensor(padded)).numpy()
        # The same text inside a batch with a longer neighbour.
        batch = np.zeros((2, 25), "int64")
        batch[0, :5] = ids[0]
        batch[1, :25] = np.arange(1, 26)
        c = model.encode_text(paddle.to_tensor(batch)).numpy()[0]
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    np.testing.assert_allclose(a[0], c, atol=1e-5)
    # Padding really is excluded: treating the pads as tokens (another pad id) changes the output.
    unmasked = make_tiny_model(pad_token_id=39999)
    unmasked.set_state_dict(model.state_dict())
    with paddle.no_grad():
        d = unmasked.encode_text(paddle.to_tensor(padded)).numpy()
    assert np.abs(d[0] - a[0]).max() > 1e-3


def test_encoders_return_unnormalised_and_normalised_variants():
    model = make_tiny_model()
    pixels = paddle.to_tensor(np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("float32"))
    ids = paddle.to_tensor(np.array([[1, 5, 6, 2], [1, 7, 2, 0]], "int64"))
    with paddle.no_grad():
        raw_img, norm_img = model.encode_image(pixels), model.encode_image(pixels, normalize=True)
        raw_txt, norm_txt = model.encode_text(ids), model.encode_text(ids, normalize=True)
        img, txt, scale = model(pixels, ids)
    assert raw_img.shape == [3, 32] and raw_txt.shape == [2, 32]
    assert not np.allclose(np.linalg.norm(raw_img.numpy(), axis=1), 1.0)
    np.testing.assert_allclose(np.linalg.norm(norm_img.numpy(), axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(norm_txt.numpy(), raw_txt.numpy() / np.linalg.norm(raw_txt.numpy(), axis=1,
                                                                                   keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(img.numpy(), norm_img.numpy())
    np.testing.assert_allclose(txt.numpy(), norm_txt.numpy())
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)


def test_temperature_starts_at_log_of_one_over_0_07():
    model = make_tiny_model()
    assert math.isclose(model.contrastive_loss_mm.temperature_b.item(), 2.65926, abs_tol=1e-5)


def test_dropout_override_reaches_every_dropout():
    cfg = ModelConfig.build("vit_b16", BASE_JSON, dropout=0.0)
    assert cfg.text.hidden_dropout_prob == 0 and cfg.text.attention_probs_dropout_prob == 0 and cfg.vision.dropout == 0
    cfg = ModelConfig.build("vit_b16", BASE_JSON, dropout=0.2)
    assert cfg.text.hidden_dropout_prob == 0.2 and cfg.vision.dropout == 0.2
    model = make_tiny_model(hidden_dropout_prob=0.5)
    model.train()
    ids = paddle.to_tensor(np.array([[1, 5, 6, 7, 8, 2]], "int64"))
    assert not np.allclose(model.encode_text(ids).numpy(), model.encode_text(ids).numpy())


@pytest.mark.parametrize("scheme", ["normal", "fan_in"])
def test_from_scratch_initialisation_draws_each_linear_layer_at_its_schemes_scale(scheme):
    """normal: N(0, 0.02^2) for every linear layer; fan_in: N(0, 1/fan_in).  The sample std of n draws is off by
    ~1/sqrt(2n) relative (n >= 4096 weights here: 1.1%), so 10% is a 9-sigma bound that a wrong scale (0.02
    against fan_in's 0.0625-0.125 at these widths) fails by far; embeddings and norms keep their own values."""
    paddle.seed(0)
    config = ModelConfig.build({"image_size": 32, "patch_size": 8, "width": 64, "layers": 1, "heads": 2},
                               {"vocab_size": 64, "hidden_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 2, "max_position_embeddings": 16})
    model = ErnieViL2(config, init_scheme=scheme)
    linears = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.Linear)]
    assert len(linears) >= 8
    for layer in linears:
        weight = layer.weight.numpy()
        expected = weight.shape[0] ** -0.5 if scheme == "fan_in" else 0.02
        assert abs(weight.std() / expected - 1) < 0.1, (layer.full_name(), weight.std(), expected)
        assert abs(weight.mean()) < 4 * expected / math.sqrt(weight.size)
        assert not layer.bias.numpy().any()
    assert abs(model.text_model.word_emb.weight.numpy().std() / 0.02 - 1) < 0.1
    with pytest.raises(ConfigError, match="fan_out"):
        ErnieViL2(config, init_scheme="fan_out")
