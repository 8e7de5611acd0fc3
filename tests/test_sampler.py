import pytest

from data.sampler import ResumableSampler


def _batches(sampler: ResumableSampler) -> list[list[tuple[int, int]]]:
    items = list(sampler)
    return [items[i : i + sampler.batch_size] for i in range(0, len(items), sampler.batch_size)]


def test_ranks_together_see_what_one_process_sees_per_global_batch():
    single = ResumableSampler(50, batch_size=8, seed=3)
    ranks = [ResumableSampler(50, batch_size=4, rank=r, world_size=2, seed=3) for r in range(2)]
    for s in (single, *ranks):
        s.set_epoch(2)
    single_batches = _batches(single)
    rank_batches = [_batches(s) for s in ranks]
    assert len(single_batches) == len(rank_batches[0]) == 6
    for i, batch in enumerate(single_batches):
        assert sorted(batch) == sorted(rank_batches[0][i] + rank_batches[1][i])  # same images and seeds


def test_epochs_reshuffle_and_seeds_differ():
    sampler = ResumableSampler(20, batch_size=4)
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(2)
    second = list(sampler)
    assert [i for i, _ in first] != [i for i, _ in second]
    assert len({s for _, s in first + second}) == len(first) + len(second)


def test_resuming_mid_epoch_continues_the_same_sequence():
    sampler = ResumableSampler(30, batch_size=5, rank=1, world_size=2)
    sampler.set_epoch(4)
    full = list(sampler)
    sampler.set_epoch(4, start_batch=2)
    assert list(sampler) == full[10:]
    assert len(sampler) == len(full) - 10


def test_too_small_a_dataset_is_an_error():
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ResumableSampler(7, batch_size=4, world_size=2)
