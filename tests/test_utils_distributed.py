"""The single-process side of utils.distributed: the one --device check every command line uses."""

import pytest
import torch

from utils.distributed import parse_device, rank_and_world


def test_parse_device_takes_the_spellings_this_project_runs_on() -> None:
    assert parse_device("cpu") == torch.device("cpu")
    for bad in ("gpu0", "cuda:x", "CPU", "mps", ""):
        with pytest.raises(ValueError, match=r"use cuda, cuda:N or cpu"):
            parse_device(bad)


def test_parse_device_names_what_this_machine_lacks() -> None:
    one_past_the_last = f"cuda:{torch.cuda.device_count()}"
    expected = "CUDA device" if torch.cuda.is_available() else "no CUDA device is available"
    with pytest.raises(ValueError, match=expected) as excinfo:
        parse_device(one_past_the_last)
    assert str(excinfo.value).startswith(f"--device {one_past_the_last}: ")


def test_without_a_process_group_this_is_rank_0_of_1() -> None:
    assert rank_and_world() == (0, 1)
