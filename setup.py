"""Install the ernievil2 package (it lives in packages/ernievil2).

CPU:  pip install -e .
GPU:  install paddlepaddle-gpu first (Paddle's own index), then
      ERNIEVIL2_PADDLE=paddlepaddle-gpu pip install -e .
so that pip never pulls the CPU wheel next to the GPU one (both own the `paddle` module).
"""
import os

from setuptools import find_packages, setup

PADDLE_DIST = os.environ.get("ERNIEVIL2_PADDLE", "paddlepaddle")
if PADDLE_DIST not in ("paddlepaddle", "paddlepaddle-gpu"):
    raise SystemExit(f"ERNIEVIL2_PADDLE must be paddlepaddle or paddlepaddle-gpu, got {PADDLE_DIST!r}")


# Search (faiss) and the service (FastAPI) are in the core requirements.  Optional: `pip install -e ".[milvus]"`
# (Milvus and Milvus Lite), `.[openvino]`, `.[int8]`; they install beside the core pins (pip check is clean), and
# the tests use them, so the test extra includes them.
MILVUS = ["pymilvus>=2.4.2", "milvus-lite>=2.4.0"]
OPENVINO = ["openvino>=2024.0"]  # engine openvino: precision bf16 on AMX / AVX512-BF16 CPUs (README)
INT8 = [*OPENVINO, "nncf>=2.14"]  # precision int8: post-training quantisation for OpenVINO
# `export --format onnx` (and the OpenVINO engine's ONNX copies): paddle2onnx converts, onnx checks and renames,
# onnxruntime verifies the files against the eager model.
ONNX = ["paddle2onnx>=2.0", "onnx>=1.16", "onnxruntime>=1.17"]


def read_requirements():
    here = os.path.dirname(os.path.abspath(__file__))
    reqs = []
    with open(os.path.join(here, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("paddlepaddle"):
                line = line.replace("paddlepaddle", PADDLE_DIST, 1)
            reqs.append(line)
    return reqs


setup(
    name="ernievil2",
    version="0.1.0",
    description="ERNIE-ViL 2.0 in PaddlePaddle: inference, evaluation and multi-view contrastive training",
    python_requires=">=3.9",
    package_dir={"": "packages"},
    packages=find_packages("packages"),
    package_data={"ernievil2.serve": ["page.html"], "ernievil2.data": ["object_vocab_zh.txt"]},
    install_requires=read_requirements(),
    # "search" is kept (empty) so that existing `pip install -e ".[search]"` commands still work.
    extras_require={"search": [], "milvus": MILVUS, "openvino": OPENVINO, "int8": INT8, "onnx": ONNX,
                    "test": ["pytest>=7", "selenium>=4.10", *MILVUS, *INT8, *ONNX]},
)
