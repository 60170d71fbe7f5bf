"""Weights files in any known layout: reading them into the official layout (what the model loads), loading
them into a model, and converting files between layouts and containers.

`python -m ernievil2 convert --to {paddlenlp,official,safetensors} IN OUT`: the output format follows OUT's
extension (`.pdparams` or `.safetensors`); `--to safetensors` keeps the layout and changes only the container,
giving a pickle-free copy of a `.pdparams` file.
"""
import logging
import os

from ..errors import CheckpointError, ConfigError
from ..model.weights import load_weights, read_raw_state, save_weights
from .layouts import PADDLENLP, Conversion, convert_state, detect_layout, guess_layout

logger = logging.getLogger(__name__)


def read_state(path):
    """{name: numpy array} in the official layout from a `.pdparams` or `.safetensors` file (or a PaddleNLP
    model directory).  A file in PaddleNLP's ErnieViLModel layout is converted on the fly (losslessly)."""
    path = resolve_weights_file(path)
    state = read_raw_state(path)
    # Only whole-model files are renamed: a state that merely has a key called `temperature` stays as it is.
    if guess_layout(state) == PADDLENLP and any(k.split(".")[0] in ("vision_model", "text_model", "ernie_vil")
                                                for k in state):
        state = convert_state(state, "official", source=path).state
        logger.info("note: %s: PaddleNLP ErnieViLModel layout, converted to the official layout on load", path)
    return state


def load_any_layout(model, path, strict=True):
    """Load weights of any known layout into `model` (see read_state); returns the LoadReport."""
    return load_weights(model, read_state(path), strict=strict, path_for_errors=path)


PADDLENLP_WEIGHT_FILES = ("model_state.pdparams", "model.safetensors")


def resolve_weights_file(path):
    """A weights file, or the single weights file inside a PaddleNLP model directory (save_pretrained output)."""
    if not os.path.isdir(path):
        return path
    for name in PADDLENLP_WEIGHT_FILES:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return candidate
    raise CheckpointError(f"{path}: is a directory without {' or '.join(PADDLENLP_WEIGHT_FILES)} (sharded "
                          f"PaddleNLP checkpoints are not supported; pass a single weights file)")


def _output_format(path):
    for ext in (".pdparams", ".safetensors"):
        if path.endswith(ext):
            return ext
    raise ConfigError(f"{path}: the output name must end in .pdparams or .safetensors (it chooses the format)")


def convert_file(src, dst, to, drop_unknown=False):
    """Read `src`, convert, write `dst` atomically.  Returns (source layout, Conversion)."""
    fmt = _output_format(dst)
    if to == "safetensors" and fmt != ".safetensors":
        raise ConfigError(f"{dst}: --to safetensors writes a .safetensors file; name the output *.safetensors")
    src_file = resolve_weights_file(src)
    if os.path.abspath(src_file) == os.path.abspath(dst):
        raise ConfigError(f"{dst}: the output would overwrite the input; choose another name")
    state = read_raw_state(src_file)
    if to == "safetensors":
        layout = detect_layout(state, src_file)
        result = Conversion(state, layout, layout)
    else:
        result = convert_state(state, to, drop_unknown=drop_unknown, source=src_file)
    save_weights(result.state, dst)
    return src_file, result
