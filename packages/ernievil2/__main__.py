"""`python -m ernievil2 COMMAND ...`: infer (run_infer.sh), and the other tools as they are added."""
import sys

from . import cli


def _convert_main(argv):
    from .convert import main
    return main(argv)


def _export_main(argv):
    from .export import main
    return main(argv)


def _demo_data_main(argv):
    from .demo_data import main
    return main(argv)


def _build_vocab_main(argv):
    from .vocab_builder import main
    return main(argv)


def _convert_data_main(argv):
    from .data_convert import main
    return main(argv)


COMMANDS = {"infer": cli.infer_main, "convert": _convert_main, "export": _export_main,
            "demo-data": _demo_data_main, "build-vocab": _build_vocab_main, "convert-data": _convert_data_main}


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m ernievil2 {{{','.join(COMMANDS)}}} ...", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
