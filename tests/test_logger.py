import logging
import os

from utils.logger import printable, setup_logger


def test_paths_that_are_not_utf8_reach_the_log_with_escapes(tmp_path, capfd):
    name = os.fsdecode(b"/data/bad\xff\xfe.jpg")  # what os.listdir / pathlib give for such a name
    logger = setup_logger(tmp_path, rank=0, name="slotcon-test-logger")
    try:
        logger.warning("skipping %s: cannot read image", name)
    finally:
        for handler in list(logger.handlers):
            handler.close()
            logger.removeHandler(handler)
    out, err = capfd.readouterr()
    assert "Logging error" not in err
    assert "/data/bad\\xff\\xfe.jpg: cannot read image" in out
    assert "/data/bad\\xff\\xfe.jpg: cannot read image" in (tmp_path / "log.txt").read_text(encoding="utf-8")


def test_printable_keeps_valid_text_and_escapes_only_the_bad_bytes():
    assert printable("caf\u00e9 \u4e2d") == "caf\u00e9 \u4e2d"
    assert printable(os.fsdecode(b"a\xe9b")) == "a\\xe9b"
    assert printable("\ud800") == "\\ud800"  # a lone surrogate that is no escaped byte


def test_plain_logging_cannot_write_such_a_path(tmp_path):
    """The failure the escapes prevent: a FileHandler with the default formatter drops the whole line."""
    logger = logging.getLogger("slotcon-test-plain")
    handler = logging.FileHandler(tmp_path / "plain.txt", encoding="utf-8")
    logger.addHandler(handler)
    logging.raiseExceptions, before = False, logging.raiseExceptions
    try:
        logger.warning("skipping %s", os.fsdecode(b"bad\xff.jpg"))
    finally:
        logging.raiseExceptions = before
        handler.close()
        logger.removeHandler(handler)
    assert "skipping" not in (tmp_path / "plain.txt").read_text(encoding="utf-8")
