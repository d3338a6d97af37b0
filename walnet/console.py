"""How the ``walnet`` command shows what the library reports: the ``walnet`` logger's records
(INFO as plain lines on stdout, warnings as ``walnet <command>: warning: ...`` on stderr) and
walnet's own Python warnings, in the same one-line form, for the length of a command
(:func:`console_log`, :func:`show_warning`; used by :mod:`walnet.cli`)."""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from tqdm import tqdm

#: walnet's own source files: the warnings raised in them are shown as one line.
_PACKAGE = Path(__file__).resolve().parent


def show_warning(command, default, message, category, filename, lineno, file=None, line=None):
    """walnet's own warnings (e.g. a CSV row listed twice) as one line naming the command; those of
    other packages as Python shows them."""
    if Path(filename).resolve().is_relative_to(_PACKAGE):
        print(f"walnet {command}: warning: {message}", file=sys.stderr)
    else:
        default(message, category, filename, lineno, file, line)


class ConsoleHandler(logging.Handler):
    """The ``walnet`` logger's records on the terminal: INFO as plain lines on stdout, WARNING
    and above as ``walnet <command>: warning: ...`` on stderr. The streams are looked up per
    record, so a redirected (or captured) ``sys.stdout`` receives them; a progress bar on the
    terminal is cleared for the line and drawn again below it."""

    def __init__(self, command: str):
        super().__init__(logging.INFO)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text, stream = record.getMessage(), sys.stdout
            if record.levelno >= logging.WARNING:
                text, stream = f"walnet {self.command}: warning: {text}", sys.stderr
            with tqdm.external_write_mode(file=stream):  # a line above the progress bars, not through them
                print(text, file=stream, flush=True)
        except Exception:  # noqa: BLE001 - logging's contract: a failed emit never raises
            self.handleError(record)


@contextlib.contextmanager
def console_log(command: str):
    """Shows the ``walnet`` logger's INFO and above for the block (level and handler restored
    after, so calling :func:`main` in a process leaves its logging as it was)."""
    logger = logging.getLogger("walnet")
    handler, level = ConsoleHandler(command), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
