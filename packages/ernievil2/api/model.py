"""`ernievil2.load` and `Model`: embeddings from Python, for lists of texts and of images (paths, encoded
bytes or RGB arrays)."""
import os

import numpy as np

from ..data.images import DEFAULT_MAX_PIXELS, decode_image
from ..data.prompts import ZEROSHOT_TEMPLATES
from ..data.tokenizer import ErnieTokenizer
from ..data.transforms import preprocess_eval
from ..errors import ConfigError, InputError
from ..infer.engines import make_encoder
from ..infer.options import VOCAB_HELP, WEIGHTS_HELP, CalibrationOptions, EngineOptions
from ..infer.pipeline import encode_texts_by_length
from ..infer.zeroshot import FALLBACK_LOGIT_SCALE, class_embeddings, classify


def load(weights=None, vocab_file=None, device="auto", engine="auto", precision="fp32", vision_model="vit_b16",
         text_model_config=None, max_text_len=48, image_size=224, inference_model_dir=None, cpu_threads=0,
         calibration_file=None, calibration_rows=300):
    """Load an ERNIE-ViL 2.0 dual encoder for inference.

    weights: a `.pdparams` or `.safetensors` file in the official, our or PaddleNLP's layout (not needed with
    `inference_model_dir`, an export of `python -m ernievil2 export`).  vocab_file: the ERNIE 3.0 vocab.txt.
    device: auto | cpu | gpu.  engine: auto (Paddle Inference on the CPU, OpenVINO for bf16/int8 when
    installed, eager on the GPU) | eager | paddle_inference | openvino.  precision: fp32 (the official
    embeddings), bf16 (CPUs with AVX512-BF16/AMX), int8 (AMX-INT8/AVX512-VNNI; OpenVINO + NNCF, calibrated on
    `calibration_rows` rows of `calibration_file`, a TSV of text, image_id, base64 image) or auto (the fastest
    of these whose fidelity to fp32 passes here).  vision_model: vit_b16 | vit_l14 | a dict of ViT fields.
    text_model_config: an ERNIE config JSON (None: ERNIE 3.0 base).  max_text_len: tokens per text, [CLS] and
    [SEP] included.
    """
    if not vocab_file or not os.path.isfile(vocab_file):
        raise InputError(f"vocab_file: file not found: {vocab_file}. {VOCAB_HELP}")
    if inference_model_dir is None and (not weights or not os.path.isfile(weights)):
        raise InputError(f"weights: file not found: {weights}. {WEIGHTS_HELP}")
    if max_text_len < 3:
        raise ConfigError(f"max_text_len must leave room for [CLS] and [SEP], got {max_text_len}")
    options = EngineOptions(weights=weights, vision_model=vision_model, text_model_config=text_model_config,
                            image_size=image_size, device=device, engine=engine, precision=precision,
                            inference_model_dir=inference_model_dir, cpu_threads=cpu_threads,
                            max_text_len=max_text_len,
                            calibration=CalibrationOptions(files=calibration_file, rows=calibration_rows,
                                                           vocab_file=vocab_file, max_text_len=max_text_len,
                                                           image_size=image_size))
    return Model(make_encoder(options), ErnieTokenizer.from_file(vocab_file), image_size, max_text_len)


def model_from_config(cfg):
    """The Model an inference config (infer.options) describes: its weights, engine, device and precision."""
    from ..infer.options import engine_options
    if not os.path.isfile(cfg.vocab_file):
        raise InputError(f"vocab_file: file not found: {cfg.vocab_file}. {VOCAB_HELP}")
    return Model(make_encoder(engine_options(cfg)), ErnieTokenizer.from_file(cfg.vocab_file), cfg.image_size,
                 cfg.max_text_seqlen, cfg.max_image_pixels)


class Model:
    """Texts and images -> L2-normalised float32 embeddings [N, D] (one row per input, in order)."""

    def __init__(self, encoder, tokenizer, image_size=224, max_text_len=48, max_image_pixels=DEFAULT_MAX_PIXELS):
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_text_len = max_text_len
        self.max_image_pixels = max_image_pixels

    @property
    def embed_dim(self):
        return self.encoder.embed_dim

    @property
    def logit_scale(self):
        """exp(t) of the model's learned temperature (zero-shot scores are cosine x this)."""
        scale = self.encoder.logit_scale
        return FALLBACK_LOGIT_SCALE if scale is None else scale

    def tokenize(self, texts):
        """int64 token ids [N, L], `[CLS] ids [SEP]` padded with [PAD] to the longest (L <= max_text_len)."""
        return self.tokenizer.batch_encode(_as_texts(texts), max_len=self.max_text_len)

    def preprocess(self, images):
        """float32 pixels [N, 3, S, S]: the official test-time preprocessing of each image."""
        items = _as_images(images)
        out = np.empty((len(items), 3, self.image_size, self.image_size), np.float32)
        for i, item in enumerate(items):
            out[i] = preprocess_eval(self._rgb(i, item), self.image_size)
        return out

    def encode_text(self, texts, batch_size=32):
        """L2-normalised float32 [N, D] for a list of str (a single str is one text)."""
        texts = _as_texts(texts)
        if not texts:
            return np.zeros((0, self.embed_dim), np.float32)
        ids = [np.asarray(self.tokenizer.encode(t, self.max_text_len), np.int64) for t in texts]
        return encode_texts_by_length(self.encoder, ids, _positive(batch_size), self.tokenizer.pad_id)

    def encode_image(self, images, batch_size=16):
        """L2-normalised float32 [N, D]; each image a file path (str or os.PathLike), encoded bytes (JPEG, PNG,
        WebP, ...) or a uint8 HxWx3 RGB array.  An undecodable image raises InputError naming its position."""
        items = _as_images(images)
        if not items:
            return np.zeros((0, self.embed_dim), np.float32)
        batch_size = _positive(batch_size)
        return np.concatenate([self.encoder.encode_image(self.preprocess(items[i:i + batch_size]))
                               for i in range(0, len(items), batch_size)])

    def classify(self, images, labels, templates=ZEROSHOT_TEMPLATES, top_k=5):
        """Zero-shot classification: per image, the top_k (label, probability) pairs, best first."""
        vectors = class_embeddings(self.encoder, self.tokenizer, list(labels), templates, self.max_text_len)
        order, probs = classify(self.encode_image(images), vectors, self.logit_scale, top_k)
        return [[(labels[i], float(p)) for i, p in zip(row, row_probs)] for row, row_probs in zip(order, probs)]

    def _rgb(self, position, item):
        where = f"images[{position}]" + (f" ({os.fspath(item)})" if isinstance(item, (str, os.PathLike)) else "")
        try:
            if isinstance(item, np.ndarray):
                if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                    raise ValueError(f"expected a uint8 HxWx3 RGB array, got {item.dtype} {list(item.shape)}")
                return item
            if isinstance(item, (str, os.PathLike)):
                with open(item, "rb") as f:
                    item = f.read()
            return decode_image(bytes(item), max_pixels=self.max_image_pixels)
        except (ValueError, TypeError, OSError) as e:
            raise InputError(f"{where}: {getattr(e, 'strerror', None) or e}") from None


def _as_texts(texts):
    texts = [texts] if isinstance(texts, str) else list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}]: expected str, got {type(text).__name__}")
    return texts


def _as_images(images):
    single = isinstance(images, (str, os.PathLike, bytes, bytearray)) or (
        isinstance(images, np.ndarray) and images.ndim == 3)
    return [images] if single else list(images)


def _positive(batch_size):
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    return int(batch_size)
