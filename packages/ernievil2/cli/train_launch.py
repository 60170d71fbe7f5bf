"""Script entry for `python -m paddle.distributed.launch ... train_launch.py CONFIG [-o k=v ...]`
(the launcher runs a file, not a module, so this file uses absolute imports)."""
import sys

from ernievil2.cli.train import train_main
from ernievil2.runtime import die_with_parent

if __name__ == "__main__":
    die_with_parent()  # a rank ends with its launcher (kill -KILL of run_*.sh's process group included)
    sys.exit(train_main())
