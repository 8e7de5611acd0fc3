"""Logging to the console (main process) and to ``log.txt`` in the output directory (every process)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logger(output_dir: str | Path, rank: int, name: str = "slotcon") -> logging.Logger:
    """Rank 0 logs to stdout and ``log.txt``; rank r > 0 to ``log.txt.rank{r}`` only."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", datefmt="%m/%d %H:%M:%S")
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(fmt)
        logger.addHandler(console)
    log_file = Path(output_dir) / ("log.txt" if rank == 0 else f"log.txt.rank{rank}")
    file_handler = logging.FileHandler(log_file, mode="a")
    file_handler.setFormatter(fmt)
    logger.addHandler(file_handler)
    return logger
