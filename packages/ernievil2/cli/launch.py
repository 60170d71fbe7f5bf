"""Script entry for `python -m paddle.distributed.launch ... launch.py COMMAND CONFIG [-o k=v ...]`: every rank
runs COMMAND (train, infer or embed) as `python -m ernievil2 COMMAND` would.  The launcher runs a file, not a
module, so this file uses absolute imports."""
import sys

from ernievil2.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
