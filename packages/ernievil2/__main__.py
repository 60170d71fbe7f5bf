"""`python -m ernievil2 COMMAND ...`: infer (run_infer.sh), and the other tools as they are added."""
import sys

from . import cli

COMMANDS = {"infer": cli.infer_main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ernievil2 {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
