"""Fault injection for tests (sitecustomize.py here): `fault_env` is the environment that loads it."""
import os

FAULTS_DIR = os.path.dirname(os.path.abspath(__file__))


def fault_env(base=None, **variables):
    """`base` (default os.environ) with this folder first on PYTHONPATH and the given ERNIEVIL2_* variables."""
    base = dict(os.environ if base is None else base)
    path = os.pathsep.join(p for p in (FAULTS_DIR, base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path, **{k: str(v) for k, v in variables.items()}}
