"""Script entry for `python -m paddle.distributed.launch ... launch.py COMMAND CONFIG [-o k=v ...]`: every rank
runs COMMAND (train, infer or embed) as `python -m ernievil2 COMMAND` would.  The launcher runs a file, not a
module, so this file uses absolute imports."""
import sys

from ernievil2.cli.main import main
from ernievil2.runtime import die_with_parent

if __name__ == "__main__":
    die_with_parent()  # a rank ends with its launcher (kill -KILL of run_*.sh's process group included)
    sys.exit(main())
