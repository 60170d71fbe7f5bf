"""Cross-modal retrieval evaluation: python eval_retri.py EMBEDDINGS [--json] [--ks 1,5,10] [--pairs]

EMBEDDINGS is the official 3-column embedding file (ours or the official run_infer's) or our .npz sidecar.
Prints the official table (Text2Image / Image2Text / MeanRecall x R@1, R@5, R@10, meanRecall); the metrics are
ernievil2.eval.metrics, which the trainer also uses for validation.
"""
import os
import sys

try:
    from ernievil2.cli.eval import main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "packages"))
    from ernievil2.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
