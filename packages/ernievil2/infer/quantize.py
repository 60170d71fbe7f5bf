"""`precision: int8`: the exported towers quantised after training with NNCF for OpenVINO (AMX-INT8 / AVX512-VNNI),
calibrated on rows of the user's own data.  Optional (`pip install -e ".[int8]"`).

The quantised models are cached beside the export, keyed by the calibration rows, so the minutes NNCF takes for
Base are paid once.  Linear layers run in int8; what the quantiser keeps in float (softmax, norms, the attention
probabilities) follows NNCF's transformer preset.
"""
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from importlib.metadata import version

import numpy as np

from .. import runtime
from ..data.images import decode_base64_image
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import preprocess_eval
from ..data.tsv import BadRow, expand_sources, read_rows
from ..errors import ConfigError, InputError, RuntimeSupportError
from ..fileio import temp_path_for, write_text_atomic
from ..interop.export import TOWERS, ensure_onnx, read_export_meta
from .openvino_engine import WIDTH_STEP, OpenVinoEncoder

logger = logging.getLogger(__name__)

QUANTIZE_VERSION = 3  # bumped when the recipe changes, so older cached models are not reused


def available():
    """NNCF and OpenVINO are installed (found, not imported: importing NNCF costs a second of every start-up,
    and it is needed only while quantising)."""
    return all(importlib.util.find_spec(name) is not None for name in ("nncf", "openvino"))


def int8_encoder(model_dir, calibration, cpu_threads=0, image_batch=8, towers=TOWERS, meta=None):
    """An OpenVinoEncoder running the int8 towers of the export in model_dir (quantised first if not cached); meta:
    its export.json when the caller has read it already."""
    meta = meta if meta is not None else read_export_meta(model_dir)
    if not available():
        raise RuntimeSupportError('precision int8 needs NNCF and OpenVINO: pip install -e ".[int8]"')
    towers = [t for t in towers if t in meta["towers"]]
    if not runtime.cpu_has_int8():  # before minutes of quantising
        raise RuntimeSupportError("precision int8 needs a CPU with AMX-INT8 or AVX512-VNNI; this one has neither "
                                  "(use precision fp32)")
    return OpenVinoEncoder(model_dir, precision="int8", cpu_threads=cpu_threads, image_batch=image_batch,
                           towers=towers, model_files=quantized_towers(model_dir, calibration, towers), meta=meta)


def held_out_samples(calibration, count=32):
    """Up to `count` texts and images of the rows after those calibrated on (the last calibrated ones when the
    data have no more): real inputs for the fidelity check."""
    files = expand_sources(calibration.files, "calibration_file")
    samples = calibration_samples(files, calibration.rows + count, calibration.vocab_file, calibration.max_text_len,
                                  calibration.image_size, calibration.max_image_pixels)
    return {tower: arrays[-count:] for tower, arrays in samples.items()}


def calibration_samples(files, rows, vocab_file, max_text_len, image_size, max_pixels):
    """Model inputs of the first `rows` good rows of TSV `files` (text, image_id, base64): token ids [1, L] per
    text (each alone, padded as the engine pads it, as queries run) and pixels [1, 3, S, S] per distinct image.
    Bad rows are skipped; calibrating needs no labels, so the test file itself may serve."""
    tokenizer = ErnieTokenizer.from_file(vocab_file)
    texts, images, seen = [], [], set()
    for path in files:
        for row in read_rows(path):
            if len(texts) >= rows:
                break
            if isinstance(row, BadRow):
                continue
            try:
                pixels = None if row.image_id in seen else preprocess_eval(
                    decode_base64_image(row.image_b64, max_pixels), image_size)
            except ValueError:
                continue
            ids = tokenizer.batch_encode([row.text], max_len=max_text_len)
            width = -(-ids.shape[1] // WIDTH_STEP) * WIDTH_STEP
            texts.append(np.pad(ids, ((0, 0), (0, width - ids.shape[1]))).astype(np.int64))
            if pixels is not None:
                seen.add(row.image_id)
                images.append(pixels[None].astype(np.float32))
    if not texts:
        raise InputError(f"calibration_file: no usable row (text, image_id, base64 image) in {', '.join(files)}")
    return {"text": texts, "image": images}


def quantized_towers(model_dir, calibration, towers):
    """{tower: path of its int8 OpenVINO model}, quantising (once per calibration set) the towers not cached.
    `calibration`: infer.options.CalibrationOptions."""
    if calibration is None or not calibration.files:
        raise ConfigError("precision int8 needs calibration data: set calibration_file to a TSV of your rows "
                          "(text, image_id, base64 image; a few hundred are enough)")
    files = expand_sources(calibration.files, "calibration_file")
    out_dir = os.path.join(model_dir, "int8", _cache_key(files, calibration))
    paths = {t: os.path.join(out_dir, f"{t}.xml") for t in towers}
    missing = [t for t in towers if not os.path.isfile(paths[t])]
    if not missing:
        return paths
    samples = calibration_samples(files, calibration.rows, calibration.vocab_file, calibration.max_text_len,
                                  calibration.image_size, calibration.max_image_pixels)
    logger.info("quantising the %s tower(s) to int8, calibrated on %d texts and %d images of %s, into %s (once "
                "per export and calibration data; minutes for Base)", "/".join(missing), len(samples["text"]),
                len(samples["image"]), ", ".join(files), out_dir)
    onnx = ensure_onnx(model_dir, missing)
    os.makedirs(out_dir, exist_ok=True)
    tmp = temp_path_for(out_dir)
    os.makedirs(tmp, exist_ok=True)
    try:
        for tower in missing:
            _save(_quantize(onnx[tower], tower, samples[tower]), os.path.join(tmp, f"{tower}.xml"))
            # weights first: a tower's .xml in the cache means its .bin is complete
            os.replace(os.path.join(tmp, f"{tower}.bin"), paths[tower][:-4] + ".bin")
            os.replace(os.path.join(tmp, f"{tower}.xml"), paths[tower])
        write_text_atomic(os.path.join(out_dir, "calibration.json"),
                          json.dumps({"files": files, "rows": calibration.rows}, indent=1) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _cache_key(files, calibration):
    import openvino  # the engine imports it anyway; NNCF is not imported unless it quantises
    stamps = [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in files]
    vocab = os.path.abspath(calibration.vocab_file)
    key = json.dumps([QUANTIZE_VERSION, version("nncf"), openvino.__version__, stamps, calibration.rows, vocab,
                      os.path.getsize(vocab), calibration.max_text_len, calibration.image_size])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _quantize(onnx_path, tower, samples):
    if not samples:
        raise InputError(f"calibration_file: no {tower} could be read from the calibration rows")
    # NNCF reports usage to a server unless NNCF_CI is set (its only effect): nothing here phones home.
    os.environ.setdefault("NNCF_CI", "1")
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, AdvancedSmoothQuantParameters
    model = ov.Core().read_model(onnx_path)
    nncf.set_log_level(logging.WARNING)  # not one line per layer
    # paddle2onnx leaves Identity nodes (inference-mode dropout) inside the attention blocks; they hide the
    # transformer patterns NNCF's preset looks for.
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Identity":
            op.output(0).replace(op.input_value(0))
    model.validate_nodes_and_infer_types()
    options = {"preset": nncf.QuantizationPreset.MIXED, "model_type": nncf.ModelType.TRANSFORMER,
               "subset_size": len(samples)}
    # Kept in float: attention's products (scores, and probabilities x values) and the first and last linear
    # layers.  With them in int8 a one-query encode of the demo model fell to cosine 0.01 to fp32 on some
    # captions and an image to 0.967; kept in float, 0.997 and 0.9995, for a few percent of the work.
    options["ignored_scope"] = nncf.IgnoredScope(names=_float_layers(model), validate=False)
    if tower == "text":  # measured on Base: the gentlest smoothing kept short texts closest to fp32
        smooth = AdvancedSmoothQuantParameters(matmul=0.5)
        options["advanced_parameters"] = AdvancedQuantizationParameters(smooth_quant_alphas=smooth)
    return nncf.quantize(model, nncf.Dataset(samples), **options)


def _float_layers(model):
    """Names of the layers int8 would hurt most: MatMuls of two activations (no weight on either side), and the
    first and last layers that have weights."""
    def from_weight(port):
        node = port.get_source_output().get_node()
        while node.get_type_name() in ("Convert", "Reshape", "Transpose", "Unsqueeze", "Squeeze"):
            node = node.input(0).get_source_output().get_node()
        return node.get_type_name() == "Constant"
    products, weighted = [], []
    for op in model.get_ordered_ops():
        if op.get_type_name() in ("MatMul", "Convolution"):
            (weighted if any(from_weight(port) for port in op.inputs()) else products).append(op.get_friendly_name())
    return products + weighted[:1] + weighted[-1:]


def _save(model, path):
    import openvino as ov
    ov.save_model(model, path, compress_to_fp16=False)
