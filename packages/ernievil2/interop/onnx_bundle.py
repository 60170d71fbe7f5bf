"""A deployable ONNX export: `python -m ernievil2 export --format onnx CONFIG --out DIR`.

    DIR/image.onnx   pixels     float32 [batch, 3, S, S]  -> embedding float32 [batch, D], L2-normalised
    DIR/text.onnx    input_ids  int64   [batch, length]   -> embedding float32 [batch, D], L2-normalised
    DIR/vocab.txt    the tokenizer's vocabulary (the config's vocab_file)
    DIR/onnx.json    the above, plus how to make pixels and token ids (BUNDLE_META)

One self-contained file per tower (weights inside, opset 17, batch and text length dynamic): a search service
runs the text tower per query and the image tower over a gallery, and a single graph holding both would make
every caller feed both inputs.  The files come from the same path as the OpenVINO engine's ONNX copies: the
towers are traced with paddle.jit.save (export.export_towers) and converted by paddle2onnx (export.export_onnx);
this module only names the dimensions and the output, adds the description and checks the result.
"""
import json
import os
import shutil

import numpy as np

from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ExportError, InferenceModelError
from ..fileio import read_json, write_text_atomic
from .export import TOWERS, export_onnx, export_towers, staging_dir

BUNDLE_META = "onnx.json"
BUNDLE_FORMAT = "ernievil2-onnx"
BUNDLE_VERSION = 1
OUTPUT_NAME = "embedding"
DIMS = {"image": ["batch", 3, None, None], "text": ["batch", "length"]}  # None: the image size, filled in


def export_onnx_bundle(model, out_dir, vocab_file, max_text_len=48, opset=17, extra_meta=None):
    """Write the bundle of `model` (an ErnieViL2) into out_dir, replaced as a whole; returns its description."""
    import onnx

    with staging_dir(out_dir, BUNDLE_META) as stage:
        paddle_dir = os.path.join(stage, "paddle")
        export_meta = export_towers(model, paddle_dir)
        try:
            onnx_files = export_onnx(paddle_dir, opset=opset)
        except ImportError:
            raise ExportError("paddle2onnx is needed for --format onnx: pip install -e \".[onnx]\"") from None
        except Exception as e:  # paddle2onnx reports unsupported ops and checker failures variously
            raise ExportError(f"{out_dir}: ONNX conversion failed: {type(e).__name__}: {e}") from e
        meta = describe(export_meta, max_text_len, opset)
        for tower, path in onnx_files.items():
            proto = onnx.load(path)
            _name_interface(proto, tower, export_meta)
            proto.doc_string = (f"ERNIE-ViL 2.0 {tower} tower: {meta['towers'][tower]['summary']}. "
                                f"See {BUNDLE_META} beside this file.")
            onnx.checker.check_model(proto, full_check=True)
            onnx.save(proto, os.path.join(stage, meta["towers"][tower]["file"]))
        shutil.rmtree(paddle_dir)
        shutil.copyfile(vocab_file, os.path.join(stage, "vocab.txt"))
        meta.update(extra_meta or {})
        write_text_atomic(os.path.join(stage, BUNDLE_META), json.dumps(meta, indent=2) + "\n")
    return meta


def _name_interface(proto, tower, export_meta):
    """Documented names: the input keeps its name (pixels / input_ids), the output becomes `embedding`, and the
    dynamic dimensions are called batch and length (paddle2onnx writes DynamicDimension.N)."""
    graph = proto.graph
    size = export_meta["image_size"]
    wanted = [size if d is None else d for d in DIMS[tower]]
    for value, dims in ((graph.input[0], wanted), (graph.output[0], ["batch", export_meta["embed_dim"]])):
        shape = value.type.tensor_type.shape.dim
        if len(shape) != len(dims):
            raise ExportError(f"{tower} tower: ONNX {value.name} has rank {len(shape)}, expected {len(dims)}")
        for dim, want in zip(shape, dims):
            if isinstance(want, str):
                dim.dim_param = want
            elif dim.HasField("dim_value") and dim.dim_value != want:
                raise ExportError(f"{tower} tower: ONNX {value.name} has shape {list(shape)}, expected {dims}")
    old = graph.output[0].name
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == old else name for name in node.input]
    graph.output[0].name = OUTPUT_NAME
    # paddle2onnx leaves a few constants no node reads; ONNX Runtime and TensorRT warn about each one.
    used = _names_read(graph)
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)


def _names_read(graph):
    """Every tensor name a node of `graph` (or of a subgraph of one, e.g. an If branch) reads."""
    import onnx
    names = {value.name for value in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                names |= _names_read(sub)
    return names


def describe(export_meta, max_text_len, opset):
    """The content of onnx.json: interface, preprocessing and tokenisation, enough to use the files elsewhere."""
    size, dim = export_meta["image_size"], export_meta["embed_dim"]
    short = f"short side to {size}"
    return {
        "format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "onnx_opset": opset,
        "embed_dim": dim, "image_size": size, "normalized": True, "logit_scale": export_meta.get("logit_scale"),
        "similarity": "dot product of the two towers' embeddings (cosine: both are L2-normalised)",
        "towers": {
            "image": {"file": "image.onnx", "summary": f"pixels float32 [batch, 3, {size}, {size}] -> "
                                                      f"{OUTPUT_NAME} float32 [batch, {dim}]",
                      "inputs": [{"name": "pixels", "dtype": "float32", "shape": ["batch", 3, size, size]}],
                      "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", dim]}]},
            "text": {"file": "text.onnx", "summary": f"input_ids int64 [batch, length] -> {OUTPUT_NAME} float32 "
                                                    f"[batch, {dim}]",
                     "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "length"]}],
                     "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", dim]}]}},
        "image_preprocessing": {
            "decode": "RGB, 8 bits per channel (grayscale replicated to 3 channels, alpha dropped)",
            "resize": f"bilinear, {short}; the long side becomes int({size} / short * long) + 1 (an image whose "
                      f"short side is already {size} is not resized)",
            "crop": f"centre {size} x {size}: offset ceil((side - {size}) / 2) on each axis",
            "normalize": "x / 255, then (x - mean) / std per channel",
            "mean": [float(v) for v in IMAGENET_MEAN], "std": [float(v) for v in IMAGENET_STD],
            "layout": "NCHW", "reference": "ernievil2.data.transforms.preprocess_eval"},
        "tokenization": {
            "vocab_file": "vocab.txt", "algorithm": "BERT basic tokenisation (lower-case, accents stripped, CJK "
                                                    "ideographs and punctuation split off) then greedy WordPiece",
            "layout": f"[CLS] + word-piece ids[:{max_text_len - 2}] + [SEP]; a batch is right-padded with "
                      f"pad_id (padding does not change a text's embedding)",
            "cls_token": "[CLS]", "sep_token": "[SEP]", "pad_id": export_meta["pad_token_id"],
            "unk_token": "[UNK]", "max_len": max_text_len, "max_position_embeddings": export_meta["max_text_len"],
            "reference": "ernievil2.data.tokenizer.ErnieTokenizer.encode"},
        "model_config": export_meta["model_config"],
    }


def read_bundle_meta(bundle_dir):
    path = os.path.join(bundle_dir, BUNDLE_META)
    if not os.path.isfile(path):
        raise InferenceModelError(f"{bundle_dir}: not an ONNX export ({BUNDLE_META} missing); write one with "
                                  f"python -m ernievil2 export --format onnx CONFIG --out DIR")
    meta = read_json(path, InferenceModelError)
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise InferenceModelError(f"{path}: not an ERNIE-ViL 2.0 ONNX description (format is not {BUNDLE_FORMAT!r})")
    return meta


class OnnxRuntimeEncoder:
    """The bundle run by ONNX Runtime (CPU), with the encode_text / encode_image interface of the other engines:
    what the export command checks against the eager model, and a reference for deployments."""

    def __init__(self, bundle_dir, towers=TOWERS, threads=0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ExportError("onnxruntime is needed to run the ONNX export: pip install onnxruntime") from None
        self.meta = read_bundle_meta(bundle_dir)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        self._sessions = {tower: ort.InferenceSession(os.path.join(bundle_dir, self.meta["towers"][tower]["file"]),
                                                      options, providers=["CPUExecutionProvider"])
                          for tower in towers}

    @property
    def towers(self):
        return tuple(self._sessions)

    def _run(self, tower, name, array):
        return self._sessions[tower].run([OUTPUT_NAME], {name: array})[0]

    def encode_text(self, ids):
        return self._run("text", "input_ids", np.ascontiguousarray(ids, np.int64))

    def encode_image(self, pixels):
        return self._run("image", "pixels", np.ascontiguousarray(pixels, np.float32))
