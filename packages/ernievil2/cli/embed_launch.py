"""Script entry for `python -m paddle.distributed.launch ... embed_launch.py CONFIG [-o k=v ...]` (embed with
several ranks; the launcher runs a file, not a module, so this file uses absolute imports)."""
import sys

from ernievil2.cli.gallery import embed_main

if __name__ == "__main__":
    sys.exit(embed_main())
