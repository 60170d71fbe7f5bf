"""Low-precision modes must keep the embeddings: before a bf16 or int8 encoder is used, its embeddings of fixed
probe inputs (and for int8 of real rows held out from its calibration, texts one at a time as queries run) are
compared with fp32's on this CPU; below the bar it is refused.  The verdict
is kept beside the export (per engine, precision and CPU), so the check runs once."""
import hashlib
import json
import os

import numpy as np

from ..errors import RuntimeSupportError
from ..fileio import write_text_atomic
from ..runtime import cpu_flags

# Lowest cosine to fp32 a mode may give on the probe inputs (the README reports what each mode measures).
FIDELITY_BAR = {"bf16": 0.999, "int8": 0.98}
PROBE_ROWS = 4


def probe_inputs(image_size, vocab_size, seed=1234):
    """Deterministic pixels [n, 3, S, S] (smooth gradients with a bright square, normalised like photos) and
    token ids [n, L] ([CLS] ... [SEP] with padding in one row)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:image_size, 0:image_size] / image_size
    pixels = np.empty((PROBE_ROWS, 3, image_size, image_size), np.float32)
    for i in range(PROBE_ROWS):
        a, b, c = rng.uniform(-1.5, 1.5, 3)
        pixels[i] = np.stack([a * xs + b * ys, b * xs - c * ys, c * xs * ys + a]).astype(np.float32)
        k = image_size // 4
        pixels[i, :, k:2 * k, k:2 * k] += 1.5
    ids = rng.integers(5, min(vocab_size, 30000), (PROBE_ROWS, 24)).astype(np.int64)
    ids[:, 0], ids[:, -1] = 1, 2
    ids[0, 12:] = 0
    ids[0, 11] = 2
    return pixels, ids


def cpu_signature():
    flags = " ".join(sorted(cpu_flags()))
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return hashlib.sha1(f"{model}|{flags}".encode()).hexdigest()[:16]


def lowest_cosine(encoder, reference, image_size, vocab_size, extra_inputs=None):
    """The lowest cosine between two encoders' embeddings of the probe images and texts, and of extra_inputs
    ({tower: [array, ...]}, each array encoded in one call: e.g. real texts one at a time, as queries run)."""
    pixels, ids = probe_inputs(image_size, vocab_size)
    inputs = {"image": [pixels], "text": [ids]}
    for tower, arrays in (extra_inputs or {}).items():
        inputs[tower] = inputs[tower] + list(arrays)
    worst = 1.0
    for name, arrays in inputs.items():
        if name not in encoder.towers or name not in reference.towers:
            continue
        for data in arrays:
            got = getattr(encoder, f"encode_{name}")(data).astype(np.float64)
            ref = getattr(reference, f"encode_{name}")(data).astype(np.float64)
            cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
            worst = min(worst, float(cos.min()))
    return worst


def checked(encoder, make_reference, model_dir, engine, precision, extra_inputs=None):
    """`encoder` if its fidelity to fp32 (make_reference()) passes the bar on this CPU, else RuntimeSupportError.
    extra_inputs: a function returning more inputs to check (lowest_cosine), called only when checking."""
    bar = FIDELITY_BAR.get(precision)
    if bar is None:
        return encoder
    meta_path = os.path.join(model_dir, "fidelity.json")
    variant = getattr(encoder, "variant", "")  # e.g. which calibration an int8 model came from
    key = f"{engine}/{precision}{'/' + variant if variant else ''}/{cpu_signature()}"
    try:
        with open(meta_path, encoding="utf-8") as f:
            verdicts = json.load(f)
    except (OSError, ValueError):
        verdicts = {}
    cosine = verdicts.get(key)
    if cosine is None:
        meta = encoder.meta
        cosine = lowest_cosine(encoder, make_reference(), int(meta["image_size"]),
                               int(meta.get("vocab_size") or 40000), extra_inputs() if extra_inputs else None)
        verdicts[key] = cosine
        try:
            write_text_atomic(meta_path, json.dumps(verdicts, indent=1) + "\n")
        except OSError:
            pass  # a read-only export: check again next time
    if cosine < bar:
        raise RuntimeSupportError(f"precision {precision} with engine {engine} gives embeddings of cosine "
                                  f"{cosine:.5f} to fp32 on this CPU, below the bar of {bar}; use precision fp32")
    return encoder
