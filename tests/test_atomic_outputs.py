"""Every tool that writes a result writes it whole or not at all (utils/atomic.py), and a read-only or full disk is
one line, found before a long pass where there is one: viz_slots.py, both converters, the evaluations' JSON (each
test fails without its mechanism)."""

import errno
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from eval import unsupervised_seg
from tests.test_save_atomic import _FullDisk
from tests.test_viz_slots import _blocky_images, _checkpoint
from tests.transfer_helpers import save_slotcon_checkpoint
from tests.unprivileged import error_as_unprivileged
from utils.atomic import OutputWriteError, check_writable
from viz_slots import main as viz_main

ROOT = Path(__file__).resolve().parents[1]
REAL_OPEN = os.open


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_check_writable_finds_a_full_disk_a_folder_and_a_missing_one(tmp_path, monkeypatch):
    with pytest.raises(OutputWriteError, match="it is a folder"):
        check_writable(tmp_path)
    with pytest.raises(OutputWriteError, match=f"the folder {tmp_path / 'no'} does not exist"):
        check_writable(tmp_path / "no" / "out.json")
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(OutputWriteError) as full:
        check_writable(tmp_path / "out.json")
    assert str(full.value) == f"cannot write {tmp_path / 'out.json'}: No space [ENOSPC]"
    assert _leftovers(tmp_path) == []  # the probe is gone


def test_viz_says_its_save_path_is_read_only_before_loading_anything(tmp_path):
    shared = Path(tempfile.mkdtemp(prefix="slotcon-ro-"))  # pytest's own folders are root's alone
    try:
        shared.chmod(0o555)
        message = error_as_unprivileged(
            lambda: viz_main(["--model-path", str(tmp_path / "absent.pth"), "--save-path", str(shared / "viz.png")]),
            SystemExit,
        )
    finally:
        shared.chmod(0o755)
        shutil.rmtree(shared)
    assert message == f"viz_slots.py: --save-path: cannot write {shared / 'viz.png'}: Permission denied [EACCES]"


def test_viz_on_a_disk_that_fills_during_the_search_leaves_no_picture(tmp_path, monkeypatch):
    paths = _blocky_images(tmp_path / "images", 3)
    checkpoint = _checkpoint(tmp_path / "ckpt.pth")
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fd, room=1000))  # the check passed; then full
    with pytest.raises(SystemExit) as stopped:
        viz_main(
            [
                *("--model-path", str(checkpoint), "--dataset", "folder", "--data-dir", str(paths[0].parent)),
                *("--image-size", "32", "--dpi", "16", "--workers", "0", "--device", "cpu", "--topk", "1"),
                *("--save-path", str(out / "viz.png")),
            ]
        )
    assert stopped.value.code == f"viz_slots.py: cannot write {out / 'viz.png'}: No space left on device [ENOSPC]"
    assert _leftovers(out) == []


@pytest.mark.parametrize(
    "converter", ["transfer/detection/convert_pretrain_to_d2.py", "transfer/segmentation/convert_pretrain_to_mm.py"]
)
def test_a_converter_on_a_full_disk_leaves_no_truncated_file(tmp_path, converter):
    checkpoint = tmp_path / "slotcon_r18.pth"
    save_slotcon_checkpoint(checkpoint, "resnet18", seed=0)
    out = tmp_path / "out"
    out.mkdir()
    target = out / "converted.out"

    def limit_file_size() -> None:  # the kernel refuses to grow a file past 1 MiB (EFBIG), as a full disk would
        resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, resource.RLIM_INFINITY))

    done = subprocess.run(
        [sys.executable, converter, str(checkpoint), str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit_file_size,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip() == f"cannot write {target}: File too large [EFBIG]"
    assert _leftovers(out) == []


def test_an_evaluation_says_its_json_cannot_be_written_before_evaluating(tmp_path, monkeypatch, capsys):
    out = tmp_path / "results"
    out.mkdir()

    def read_only_results(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)).parent == out and flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system")
        return REAL_OPEN(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_results)
    code = unsupervised_seg.main(
        [
            "--checkpoint",
            str(tmp_path / "absent.pth"),
            "--data-dir",
            str(tmp_path),
            "--output-json",
            str(out / "r.json"),
        ]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        f"python -m eval.unsupervised_seg: error: cannot write {out / 'r.json'}: Read-only file system [EROFS]\n"
    )
