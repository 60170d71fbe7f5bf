"""YAML + `-o` overrides: types, choices, unknown keys, and every shipped config loads."""
import glob
import os

import pytest

from conftest import REPO
from ernievil2.config import (
    ConfigError,
    Field,
    Section,
    load_config,
    parse_override,
    split_cli_overrides,
)
from ernievil2.infer.options import load_infer_config
from ernievil2.train.config import load_train_config

SCHEMA = {"name": "x", "batch": 8, "rate": 0.5, "flag": True, "mode": Field("a", choices=("a", "b")),
          "path": Field(None, type=str), "need": Field(type=int),
          "nested": {"depth": 2, "spec": Field("s", type=(str, dict))}}


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_defaults_file_and_overrides_merge_in_that_order(tmp_path):
    path = write(tmp_path, "need: 1\nbatch: 16\nnested:\n  depth: 3\n")
    cfg = load_config(SCHEMA, path, ["nested.depth=4", "rate=1", "path=/a b", "nested.spec={k: 1}"])
    assert (cfg.need, cfg.batch, cfg.nested.depth, cfg.rate, cfg.path) == (1, 16, 4, 1.0, "/a b")
    assert isinstance(cfg.rate, float) and cfg.nested.spec == {"k": 1} and cfg.name == "x"


@pytest.mark.parametrize("text,overrides,message", [
    ("need: 1\nbtach: 3\n", [], "unknown key 'btach' (did you mean batch?)"),
    ("need: 1\nnested: {dept: 1}\n", [], "unknown key 'nested.dept' (did you mean nested.depth?)"),
    ("need: 1\n", ["nested.depht=1"], "unknown override key 'nested.depht'"),
    ("need: 1\nbatch: many\n", [], "'batch' must be int, got 'many'"),
    ("need: 1\nflag: 1\n", [], "'flag' must be bool"),
    ("need: 1\n", ["mode=c"], "'mode' must be one of a, b; got 'c'"),
    ("batch: 2\n", [], "missing required key 'need'"),
    ("need: 1\nnested: 5\n", [], "'nested' must be a mapping"),
    ("need: [1\n", [], ":2: invalid YAML"),
    ("- a\n- b\n", [], "the top level must be a mapping"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, overrides, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(SCHEMA, path, overrides)
    assert message in str(err.value) and path in str(err.value)


def test_overrides_reach_into_a_model_tower_given_as_keys_or_as_a_preset(tmp_path):
    demo = os.path.join(REPO, "packages", "configs", "demo.yaml")
    cfg = load_train_config(demo, ["model.vision.heads=1", "model.text.num_attention_heads=1"])
    assert cfg.model.vision["heads"] == 1 and cfg.model.vision["width"] == 64  # the rest as in the YAML
    assert cfg.model.text["num_attention_heads"] == 1 and cfg.model.text["hidden_size"] == 64
    base = os.path.join(REPO, "packages", "configs", "ernie_vil_base_finetune.yaml")
    assert load_train_config(base, ["model.vision.layers=6"]).model.vision == {"preset": "vit_b16", "layers": 6}
    with pytest.raises(ConfigError, match=r"unknown override key 'model.vision.hedas' \(did you mean "
                                          r"model.vision.heads\?\)"):
        load_train_config(demo, ["model.vision.hedas=1"])
    with pytest.raises(ConfigError, match="'model.text' is '.*ernie_config.base.json' in the config, not a mapping"):
        load_train_config(base, ["model.text.num_hidden_layers=6"])
    with pytest.raises(ConfigError, match="'model.vision.heads' must be >= 1"):
        load_train_config(demo, ["model.vision.heads=0"])


def test_override_parsing():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=null") == ("a", None)
    assert parse_override("text=图片中包含") == ("text", "图片中包含")
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("novalue")
    rest, overrides = split_cli_overrides(["c.yaml", "-o", "a=1", "-ob=2", "--override", "c=3"])
    assert rest == ["c.yaml"] and overrides == ["a=1", "b=2", "c=3"]


def test_every_shipped_config_loads():
    configs = sorted(glob.glob(os.path.join(REPO, "packages", "configs", "*.yaml")))
    assert len(configs) >= 4
    for path in configs:
        if os.path.basename(path) == "ernie_vil_base.yaml":
            cfg = load_infer_config(path)
            assert cfg.infer_batch_size == 10 and cfg.unk_token == 17963
        else:
            cfg = load_train_config(path)
            assert cfg.data.batch_size >= 1 and cfg.schedule.max_steps >= 1


def test_yaml_11_words_stay_strings_and_booleans_stay_true_false(tmp_path):
    # YAML 1.1 reads off/on/yes/no as booleans: `amp.mode: off` would be False and fail the str check.
    demo = os.path.join(REPO, "packages", "configs", "demo.yaml")
    cfg = load_train_config(demo, ["amp.mode=off", "log.visualdl=false", "data.shuffle=True"])
    assert cfg.amp.mode == "off" and cfg.log.visualdl is False and cfg.data.shuffle is True
    path = write(tmp_path, "need: 1\nname: off\nflag: false\npath: yes\nnested: {spec: on}\n")
    cfg = load_config(SCHEMA, path, ["mode=b"])
    assert (cfg.name, cfg.flag, cfg.path, cfg.nested.spec) == ("off", False, "yes", "on")
    with pytest.raises(ConfigError, match="'flag' must be bool, got 'no'"):  # booleans are true/false only
        load_config(SCHEMA, path, ["flag=no"])


def test_amp_mode_off_in_a_training_config_file(tmp_path):
    demo = os.path.join(REPO, "packages", "configs", "demo.yaml")
    text = open(demo, encoding="utf-8").read() + "\namp:\n  mode: off\n  level: O1\n"
    cfg = load_train_config(write(tmp_path, text))
    assert cfg.amp.mode == "off"


def test_yaml_12_numbers():
    assert parse_override("lr=1e-3") == ("lr", 0.001)  # YAML 1.1 would keep "1e-3" a string
    assert parse_override("n=010") == ("n", 10)  # decimal, not octal
    assert parse_override("x=1.5") == ("x", 1.5)
    assert parse_override("host=127.0.0.1:8090") == ("host", "127.0.0.1:8090")
    assert parse_override("t=1:20") == ("t", "1:20")  # not sexagesimal 80


RANGED = {"count": Field(1, minimum=1), "ratio": Field(0.5, minimum=0.0, below=1.0), "eps": Field(1e-3, maximum=1.0),
          "terms": Field(["a"], items=("a", "b"))}


@pytest.mark.parametrize("override,message", [
    ("count=0", "'count' must be >= 1, got 0"),
    ("ratio=1.0", "'ratio' must be in [0.0, 1.0), got 1.0"),
    ("ratio=.nan", "'ratio' must be in [0.0, 1.0), got nan"),
    ("eps=2", "'eps' must be <= 1.0, got 2.0"),
    ("terms=[a, c]", "'terms' may hold only a, b; got 'c'"),
])
def test_ranges_and_list_items_are_checked(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(RANGED, None, [override])
    assert message in str(err.value)
    assert load_config(RANGED, None, ["count=7", "ratio=0", "terms=[b, a]"]).terms == ["b", "a"]


def test_a_section_check_names_the_key_under_its_section():
    def at_most_one(node):
        if node.a and node.b:
            raise ConfigError("and b cannot both be true", where="a")
    schema = {"top": Section({"a": False, "b": False}, check=at_most_one)}
    assert load_config(schema, None, ["top.a=true"]).top.a is True
    with pytest.raises(ConfigError, match=r"<config>: 'top.a' and b cannot both be true"):
        load_config(schema, None, ["top.a=true", "top.b=true"])


def test_the_chunk_fingerprint_leaves_out_exactly_the_keys_that_do_not_affect_output():
    from ernievil2.infer import sharding
    from ernievil2.infer.options import OUTPUT_ONLY_KEYS
    assert sharding.OUTPUT_ONLY_KEYS is OUTPUT_ONLY_KEYS  # one declaration: the schema
    assert {"device", "progress", "output_file"} <= set(OUTPUT_ONLY_KEYS)
    assert not {"max_text_seqlen", "precision", "init_from_params"} & set(OUTPUT_ONLY_KEYS)


def test_typed_options_take_their_defaults_from_the_schema():
    from dataclasses import fields

    from ernievil2.infer.options import INFER_SCHEMA, YAML_KEYS, PipelineOptions
    for f in fields(PipelineOptions):
        if f.name != "vocab_file":
            assert f.default == INFER_SCHEMA[YAML_KEYS.get(f.name, f.name)].default, f.name


def test_loss_and_model_sections_are_checked_at_load(monkeypatch):
    demo = os.path.join(REPO, "packages", "configs", "demo.yaml")
    cases = [(["loss.queue.enabled=true", "loss.queue.size=100"],
              "'loss.queue.size' (100) must be a multiple of the global batch size (48 = data.batch_size 48 x 1"),
             (["model.vision={width: 64, heads: 3}"], "'model.vision.width' 64 is not divisible by heads 3"),
             (["model.vision={widht: 64}"], "unknown key 'model.vision.widht' (did you mean model.vision.width?)"),
             (["model.text={hidden_act: tanh}"], "'model.text.hidden_act' must be one of gelu, relu"),
             (["loss.queue.momentum=1"], "'loss.queue.momentum' must be in [0.0, 1.0)"),
             # the demo runs to_static; recompute would silently not happen inside its program
             (["model.recompute=true"], "'model.recompute' does not recompute inside to_static's program")]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            load_train_config(demo, overrides)
        assert message in str(err.value) and demo in str(err.value), str(err.value)
    # Under the launcher the world size is known at load: 96 rows is one global batch of 2 ranks x 48 ...
    monkeypatch.setenv("PADDLE_TRAINER_ID", "0")
    monkeypatch.setenv("PADDLE_TRAINERS_NUM", "2")
    assert load_train_config(demo, ["loss.queue.enabled=true", "loss.queue.size=96"]).loss.queue.size == 96
    # ... and 144 rows (a multiple of the per-rank 48) is not a multiple of it.
    with pytest.raises(ConfigError, match=r"\(96 = data.batch_size 48 x 2 ranks\)"):
        load_train_config(demo, ["loss.queue.enabled=true", "loss.queue.size=144"])


def test_the_committed_configuration_reference_is_the_generated_one(tmp_path, capsys):
    from ernievil2.cli.config_docs import config_reference, main
    committed = os.path.join(REPO, "docs", "configuration.md")
    text = config_reference()
    with open(committed, encoding="utf-8") as f:
        assert f.read() == text, "run: python -m ernievil2 config-docs"
    for key in ("max_text_seqlen", "loss.queue.momentum", "data.batch_size", "hidden_act", "top_k"):
        assert f"| `{key}` |" in text
    assert "| `loss.queue.momentum` | float | `0.999` | in [0.0, 1.0) | yes |" in text
    assert main(["--check", "--out", committed]) == 0
    stale = tmp_path / "configuration.md"
    stale.write_text(text.replace("max_text_seqlen", "max_len"), encoding="utf-8")
    assert main(["--check", "--out", str(stale)]) == 1
    assert main(["--out", str(stale)]) == 0 and stale.read_text(encoding="utf-8") == text


def test_inference_configs_check_the_towers_at_load(tmp_path):
    official = os.path.join(REPO, "packages", "configs", "ernie_vil_base.yaml")
    text_json = tmp_path / "text.json"
    text_json.write_text('{"hidden_size": 64, "num_attention_heads": 2, "max_position_embeddings": 40}')
    cases = [([f"text_model_config={text_json}"], ("'max_text_seqlen' 48 is longer than the text tower's "
                                                   "max_position_embeddings 40")),
             (["vision_model=vit_h14"], "'vision_model': unknown preset 'vit_h14'"),
             (["vision_model={patch_size: 15}"], "'vision_model.image_size' 224 is not a multiple of patch_size 15")]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as err:
            load_infer_config(official, overrides)
        assert message in str(err.value) and official in str(err.value), str(err.value)
    assert load_infer_config(official, [f"text_model_config={text_json}", "max_text_seqlen=40"]).max_text_seqlen == 40


def test_a_training_config_mistake_is_one_line_and_exit_2(capsys):
    from ernievil2.cli.train import main as train_main
    demo = os.path.join(REPO, "packages", "configs", "demo.yaml")
    code = train_main([demo, "-o", "loss.queue.enabled=true", "-o", "loss.queue.size=100"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "'loss.queue.size' (100) must be a multiple" in err
    assert train_main([demo, "-o", "data.max_text_len=65"]) == 2
    message = "'data.max_text_len' 65 is longer than the text tower's max_position_embeddings 64"
    assert message in capsys.readouterr().err


def test_library_checks_of_user_values_raise_config_errors():
    from ernievil2.data.tokenizer import ErnieTokenizer
    from ernievil2.interop.layouts import convert_state
    from ernievil2.runtime import resolve_device
    with pytest.raises(ConfigError, match="'device' must be auto, gpu or cpu, got 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="duplicate_tokens must be"):
        ErnieTokenizer.from_file("vocab.txt", duplicate_tokens="first")  # checked before the file is read
    with pytest.raises(ConfigError, match="unknown target layout 'onnx'"):
        convert_state({}, "onnx")
