"""A straightforward eager baseline with the official run_infer's algorithm, for bench_infer.py:
decode and preprocess the whole file into memory first, then batches of 10 rows, each row's image encoded
with its caption (no de-duplication), texts padded to 48, Paddle's default CPU settings.

    python benchmarks/official_style_infer.py TSV WEIGHTS VOCAB OUT [default|avx2]

The last argument picks MKL's code path: `default` (no MKL_DEBUG_CPU_TYPE: what the official script gets, on any
CPU) or `avx2` (MKL_DEBUG_CPU_TYPE=5).  It is applied after the imports, which set the variable on AMD CPUs, and
before MKL's first call, which reads it.  (Setting the variable to 0 is no neutral choice: it selects MKL's
generic kernels, 4x slower than the default on an Intel Xeon with AVX-512.)
"""
import os
import sys

import numpy as np
import paddle

from ernievil2.data.images import decode_base64_image
from ernievil2.data.tokenizer import ErnieTokenizer
from ernievil2.data.transforms import preprocess_eval
from ernievil2.infer.export_cache import load_model
from ernievil2.infer.options import EngineOptions


def main(tsv, weights, vocab, out, mkl_path="default"):
    if mkl_path == "avx2":
        os.environ["MKL_DEBUG_CPU_TYPE"] = "5"
    else:
        os.environ.pop("MKL_DEBUG_CPU_TYPE", None)
    tokenizer = ErnieTokenizer.from_file(vocab)
    rows = []
    with open(tsv, encoding="utf-8") as f:
        for line in f:
            text, image_id, b64 = line.rstrip("\n").split("\t")[:3]
            rows.append((tokenizer.encode(text, 48), preprocess_eval(decode_base64_image(b64)), image_id))
    model = load_model(EngineOptions(weights=weights, vision_model="vit_b16"))
    model.eval()
    with open(out, "w", encoding="utf-8") as f, paddle.no_grad():
        for start in range(0, len(rows), 10):
            batch = rows[start:start + 10]
            ids = np.zeros((len(batch), 48), np.int64)
            for i, (tokens, _, _) in enumerate(batch):
                ids[i, : len(tokens)] = tokens
            pixels = np.stack([r[1] for r in batch])
            text = model.encode_text(paddle.to_tensor(ids), normalize=True).numpy()
            image = model.encode_image(paddle.to_tensor(pixels), normalize=True).numpy()
            for t, im, r in zip(text, image, batch):
                f.write(" ".join(map(str, t)) + "\t" + " ".join(map(str, im)) + "\t1\n")


if __name__ == "__main__":
    main(*sys.argv[1:6])
