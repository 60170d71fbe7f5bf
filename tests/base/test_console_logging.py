"""The library's notes and warnings go through `logging` (an API user can silence them); the command line
shows them as it always has: warnings prefixed on stderr, notes on stderr, the trainer's report on stdout."""
import logging
import os
import re

import pytest

from ernievil2.cli.common import _ConsoleHandler, show_library_logs

PACKAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "packages", "ernievil2")


@pytest.fixture
def console():
    package = logging.getLogger("ernievil2")
    handlers, level, propagate = list(package.handlers), package.level, package.propagate
    yield package
    package.handlers[:] = handlers
    package.setLevel(level)
    package.propagate = propagate


def test_the_command_line_shows_notes_and_warnings_on_their_streams(console, capsys):
    show_library_logs()
    show_library_logs()
    assert sum(isinstance(h, _ConsoleHandler) for h in console.handlers) == 1
    logging.getLogger("ernievil2.runtime").warning("no GPU is visible; running on the CPU instead of the GPU")
    logging.getLogger("ernievil2.infer.engines").info("exporting the towers")
    logging.getLogger("ernievil2.train.trainer").info("final weights: w.pdparams")
    logging.getLogger("ernievil2.train.trainer").warning("visualdl is not installed")
    out, err = capsys.readouterr()
    assert out == "final weights: w.pdparams\n"
    assert err == ("warning: no GPU is visible; running on the CPU instead of the GPU\nexporting the towers\n"
                   "warning: visualdl is not installed\n")


def test_an_api_user_can_silence_them(console, capsys):
    show_library_logs()
    console.setLevel(logging.ERROR)
    logging.getLogger("ernievil2.runtime").warning("silenced")
    logging.getLogger("ernievil2.train.trainer").info("silenced too")
    assert capsys.readouterr() == ("", "")


def test_library_modules_do_not_print():
    printing = []
    for folder, _, files in os.walk(PACKAGE_DIR):
        if os.path.basename(folder) == "cli":
            continue
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
                for number, line in enumerate(lines, 1):
                    if re.search(r"(?<![\w.])print\(", line.split("#")[0]):
                        printing.append(f"{os.path.relpath(path, PACKAGE_DIR)}:{number}")
    assert printing == []
