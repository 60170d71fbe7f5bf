"""Script entry for `python -m paddle.distributed.launch ... infer_launch.py CONFIG [-o k=v ...]` (run_infer.sh
with several ranks; the launcher runs a file, not a module, so this file uses absolute imports)."""
import sys

from ernievil2.cli.infer import main

if __name__ == "__main__":
    sys.exit(main())
