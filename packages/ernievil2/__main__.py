"""`python -m ernievil2 COMMAND ...` (see ernievil2.cli.main)."""
import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
