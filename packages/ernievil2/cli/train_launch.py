"""Script entry for `python -m paddle.distributed.launch ... train_launch.py CONFIG [-o k=v ...]`
(the launcher runs a file, not a module, so this file uses absolute imports)."""
import sys

from ernievil2.cli.train import train_main

if __name__ == "__main__":
    sys.exit(train_main())
