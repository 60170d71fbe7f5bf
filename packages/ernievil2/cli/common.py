"""What every command shares: CONFIG plus `-o key=value` arguments, and turning errors into one line on stderr
with the error's exit status (2: bad config or input; 1: a bad row or a failed run).  ERNIEVIL2_DEBUG=1
re-raises instead, with the traceback."""
import argparse
import logging
import os
import sys

from ..config import split_cli_overrides
from ..errors import BadRowError, ConfigError, Error


def parse_with_overrides(parser, argv):
    """Parse argv with `parser` after taking out `-o key=value` overrides; returns (args, overrides)."""
    try:
        rest, overrides = split_cli_overrides(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        parser.error(str(e))
    return parser.parse_args(rest), overrides


def config_parser(prog, description, config_help):
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("config", help=config_help)
    return parser


def report(error, prog=None, bad_row_hint="", bad_row_exit=None):
    """Print `error` as one line and return its exit status (re-raise under ERNIEVIL2_DEBUG).  A bad row ends
    a run with status 1; the data tools, whose whole job is reading that input, pass bad_row_exit=2."""
    if os.environ.get("ERNIEVIL2_DEBUG"):
        raise error
    is_bad_row = isinstance(error, BadRowError)
    hint = f" {bad_row_hint}" if bad_row_hint and is_bad_row else ""
    prefix = f"{prog}: " if prog else ""
    print(f"{prefix}error: {error}{hint}", file=sys.stderr)
    if is_bad_row and bad_row_exit is not None:
        return bad_row_exit
    return error.exit_code if isinstance(error, Error) else 2


# Loggers whose notes (INFO) are a command's report on stdout, as run_train.sh has always printed them.
STDOUT_LOGGERS = ("ernievil2.train",)


class _ConsoleHandler(logging.Handler):
    """The library's notes and warnings as the commands show them: one line each, warnings prefixed
    "warning: ", on stderr (stdout for the trainer's report); the streams are looked up at each record, so
    redirected or captured streams receive them."""

    def emit(self, record):
        try:
            text = record.getMessage()
            if record.levelno >= logging.WARNING:
                text = f"warning: {text}"
            to_stdout = record.levelno < logging.WARNING and record.name.startswith(STDOUT_LOGGERS)
            stream = sys.stdout if to_stdout else sys.stderr
            stream.write(text + "\n")
            stream.flush()
        except Exception:  # noqa: BLE001 - logging must never end a run
            self.handleError(record)


def show_library_logs():
    """Send the package's notes and warnings (logging, INFO and up) to the console; once per process."""
    package = logging.getLogger("ernievil2")
    if not any(isinstance(h, _ConsoleHandler) for h in package.handlers):
        package.addHandler(_ConsoleHandler())
        package.setLevel(logging.INFO)
        package.propagate = False  # Paddle's import gives the root logger a stderr handler: not twice


def guarded(run, prog=None, bad_row_hint="", bad_row_exit=None):
    """Call run() and return its exit status; a user-fixable error (or an OS error such as a full disk or a
    missing permission) becomes one line on stderr instead of a traceback.  The library's notes and warnings
    are shown (show_library_logs)."""
    show_library_logs()
    try:
        return run() or 0
    except (Error, OSError) as e:
        return report(e, prog, bad_row_hint, bad_row_exit)


LAUNCH_OPTIONS = ("--nproc_per_node", "--master", "--nnodes", "--rank", "--devices", "--log_dir")


def add_launch_options(parser):
    """paddle.distributed.launch's options, for commands that shard their work over ranks."""
    group = parser.add_argument_group("ranks (paddle.distributed.launch; several ranks share the work)")
    for option in LAUNCH_OPTIONS:
        group.add_argument(option, dest="launch_" + option[2:])


def launch_options(args):
    """The launcher options given on the command line, as arguments for paddle.distributed.launch."""
    found = []
    for option in LAUNCH_OPTIONS:
        value = getattr(args, "launch_" + option[2:])
        if value is not None:
            found += [option, value]
    return found


def relaunch(command, launch_args, argv):
    """Replace this process by paddle.distributed.launch running `command` on every rank (cli/launch.py)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
    os.execvp(sys.executable, [sys.executable, "-m", "paddle.distributed.launch", *launch_args, script, command, *argv])


def format_hits(hits):
    """Search results (search.query.search) as lines: rank, score, id and metadata."""
    return [f"{rank:>3}  {hit['score']:.4f}  {hit['id']}" + ("" if hit["metadata"] is None else f"  {hit['metadata']}")
            for rank, hit in enumerate(hits, 1)]
