"""--dataset folder: every image below --data-dir, through symlinked folders too, each real folder once (a symlink
loop must not hang or repeat), and the count per top-level folder that the run logs."""

import os

from data.datasets import count_by_folder, list_images
from tests.pretrain_helpers import make_images


def test_symlinked_folders_are_followed_once_and_counted(tmp_path):
    data = tmp_path / "data"
    make_images(data / "local", count=4)  # local/part0, local/part1: 2 + 2
    make_images(tmp_path / "elsewhere", count=6)  # 3 + 3, reached only through links
    os.symlink(tmp_path / "elsewhere", data / "linked")
    os.symlink(tmp_path / "elsewhere" / "part0", data / "local" / "again")  # a second way into part0
    os.symlink(data, data / "local" / "part1" / "loop")  # a loop back to the root
    (data / "local" / "notes.txt").write_text("not an image")
    os.symlink(tmp_path / "missing.jpg", data / "dangling.jpg")

    files = list_images("folder", data)
    assert len(files) == 10 == len({os.path.realpath(f) for f in files})
    assert count_by_folder(files, data) == {"linked": 6, "local": 4}
    (data / "top.png").write_bytes((data / "local" / "part0" / "000.jpg").read_bytes())
    assert count_by_folder(list_images("folder", data), data) == {".": 1, "linked": 6, "local": 4}
