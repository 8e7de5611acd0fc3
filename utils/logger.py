"""Logging to the console (main process) and to ``log.txt`` in the output directory (every process)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from utils.atomic import describe_failure


def printable(text: str) -> str:
    """``text`` with the bytes of a file name that is not valid UTF-8 written as ``\\xNN`` escapes.

    Python hands such names around as strings holding lone surrogates (``surrogateescape``), which no UTF-8
    stream accepts; the escapes show the original bytes instead.
    """
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class PrintableFormatter(logging.Formatter):
    """A formatter whose lines every UTF-8 stream can write (see ``printable``)."""

    def format(self, record: logging.LogRecord) -> str:
        return printable(super().format(record))


class CheckedFileHandler(logging.FileHandler):
    """A log file that keeps its first write failure in ``failure`` (for the training loop to stop the run on, as
    on a failed save) instead of printing a traceback for every record it could not write."""

    failure = ""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if not self.failure and error is not None:
            self.failure = describe_failure(self.baseFilename, error)


def log_file_failure(logger: logging.Logger) -> str:
    """The first write failure of ``logger``'s log files ("" if none)."""
    return next((h.failure for h in logger.handlers if isinstance(h, CheckedFileHandler) and h.failure), "")


def setup_logger(output_dir: str | Path, rank: int, name: str = "slotcon") -> logging.Logger:
    """Rank 0 logs to stdout and ``log.txt``; rank r > 0 to ``log.txt.rank{r}`` only."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = PrintableFormatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        logger.addHandler(console)
    log_file = Path(output_dir) / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")
    file_handler = CheckedFileHandler(log_file, mode="a", encoding="utf-8")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    return logger
