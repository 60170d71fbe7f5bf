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
    install_requires=read_requirements(),
    extras_require={"test": ["pytest>=7"]},
)
