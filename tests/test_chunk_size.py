"""The default channels_per_task (pure arithmetic; the figures it uses are measured in docs/benchmarks.md)."""

import pytest
from conftest import run_cli, write_cube_toml

from hpc_imager.sizing.chunk_size import (
    DEFAULT_FIXED_SECONDS,
    DEFAULT_SECONDS_PER_MEGAPIXEL_CHANNEL,
    MIN_TASKS_PER_SHORT_SHARE,
    MIN_TASKS_PER_WORKER,
    choose_channels_per_task,
    max_channels_in_memory,
    run_seconds,
)


def test_run_time_counts_waves_of_tasks():
    # 63 channels in tasks of 8 → 8 tasks → 4 waves on 2 workers, each 1.5 s + 8 × 0.5 s
    assert run_seconds(63, 2, 8, 1.5, 0.5) == pytest.approx(4 * (1.5 + 4.0))
    assert run_seconds(4, 2, 8, 1.5, 0.5) == pytest.approx(1.5 + 4 * 0.5)  # one short task


def test_ngc5921_on_two_workers_gets_eight_channels():
    # 63 channels, 2 workers, the default costs at 1024² (a worker's share ≈ 36 s, short): 16 channels
    # a task would be fastest by the model, 8 (8 tasks, 4 waves) is within the slack and smaller
    per_channel = DEFAULT_SECONDS_PER_MEGAPIXEL_CHANNEL * 1024 * 1024 / 1e6
    assert choose_channels_per_task(63, 2, DEFAULT_FIXED_SECONDS, per_channel) == 8


def test_a_short_share_gets_fewer_larger_tasks():
    # the benchmark's simulated cube, 512 channels of 128² on 2 workers: a worker's share is ~5 s, so
    # two tasks each (each task pays its fixed cost again); the same cube costing 100 × more per
    # task and channel (a share of ~8 min) gets four tasks a worker
    assert choose_channels_per_task(512, 2, 0.5, 0.018) == 512 // (2 * MIN_TASKS_PER_SHORT_SHARE)
    assert choose_channels_per_task(512, 2, 50.0, 1.8) == 512 // (2 * MIN_TASKS_PER_WORKER)


def test_no_fixed_cost_means_single_channels():
    assert choose_channels_per_task(63, 2, 0.0, 0.5) == 1


def test_every_worker_gets_several_tasks():
    c = choose_channels_per_task(1000, 4, 100.0, 1.0)  # huge fixed cost: as large as allowed
    assert c == 63  # 16 tasks of ≤63 channels = 4 per worker; 64 would make 16 too, but 63 is within slack
    assert -(-1000 // c) >= 4 * MIN_TASKS_PER_WORKER


def test_memory_bounds_the_task():
    assert choose_channels_per_task(1000, 2, 100.0, 0.1, max_channels=5) == 5
    assert max_channels_in_memory(4 * 2**30, 0.36 * 2**30, 44 * 1024**2) == int((4 - 0.36) * 2**30 // (44 * 1024**2))
    assert max_channels_in_memory(0.1 * 2**30, 0.36 * 2**30, 44 * 1024**2) == 1


def test_fewer_channels_than_workers():
    assert choose_channels_per_task(3, 8, 1.5, 0.5) == 1


def test_smallest_within_slack_of_fastest():
    # 100 channels on 1 worker, fixed 1 s, 1 s per channel: 25 is the largest allowed (4 tasks);
    # the answer is the smallest size within 5 % of the fastest allowed
    c = choose_channels_per_task(100, 1, 1.0, 1.0)
    best = min(run_seconds(100, 1, k, 1.0, 1.0) for k in range(1, 26) if -(-100 // k) >= MIN_TASKS_PER_WORKER)
    assert run_seconds(100, 1, c, 1.0, 1.0) <= best * 1.05
    assert all(run_seconds(100, 1, k, 1.0, 1.0) > best * 1.05 for k in range(1, c))


def test_frequency_grids_avoid_a_last_chunk_of_one_channel():
    """41 channels would be 8 × 5 + 1: the one-channel chunk needs a guard channel where output
    channels are not one data channel each; another size is chosen where one is allowed."""
    assert choose_channels_per_task(41, 2, 15.0, 4.7) == 5  # a long share: 4 tasks a worker
    c = choose_channels_per_task(41, 2, 15.0, 4.7, avoid_single_channel_chunks=True)
    assert c > 1 and 41 % c != 1 and -(-41 // c) >= 2 * MIN_TASKS_PER_WORKER
    assert choose_channels_per_task(63, 2, 0.0, 0.5, avoid_single_channel_chunks=True) > 1  # not all ones
    assert choose_channels_per_task(3, 8, 1.5, 0.5, avoid_single_channel_chunks=True) == 1  # nothing else fits


def test_a_mode_that_allows_only_some_sizes_gets_one_of_them():
    # whole-cube automask: chunks must lie in serial's blocks of 10 channels (imaging/iteration.py)
    assert choose_channels_per_task(63, 1, 0.5, 1.15) == 7  # the free choice: channels 7-13 span two blocks
    assert choose_channels_per_task(63, 1, 0.5, 1.15, mode_allows=lambda c: 10 % c == 0) == 5
    assert choose_channels_per_task(63, 2, 0.5, 1.15, mode_allows=lambda c: c > 100) == 1  # none: one channel a task


def _plan_line(tmp_path, ngc5921_ms, tclean: dict, site: str) -> str:
    site_file = tmp_path / "site.toml"
    site_file.write_text('scheduler = "local"\nnode_cores = 1\nnode_memory = "auto"\nmemory_policy = "dedicated"\n'
                         + site)
    cube = write_cube_toml(tmp_path / "cube", ngc5921_ms, dict({"imsize": [1024, 1024]}, **tclean), {})
    return run_cli("plan", "--site", site_file, cube).stdout.splitlines()[0]


def test_a_slow_ms_read_makes_larger_tasks(tmp_path, ngc5921_ms):
    """Every task reads the whole MS: at 1 MB/s NGC5921's 36 MB costs each task 36 s, so one worker
    takes 63 channels in 4 tasks of 16 instead of 9 of 7 (the default's 500 MB/s: 0.07 s a task)."""
    assert "9 task(s) of 7 channel(s)" in _plan_line(tmp_path, ngc5921_ms, {}, "")
    assert "4 task(s) of 16 channel(s)" in _plan_line(tmp_path, ngc5921_ms, {}, 'ms_read_rate = "1MB"\n')


def test_whole_cube_automask_gets_chunks_inside_serials_blocks(tmp_path, ngc5921_ms):
    """At 1024² serial automasks blocks of 10 channels; the free choice of 7 would span two (refused), so
    the default takes a size that divides 10; at niter 0 it keeps the free choice of 7 (channels 7-13)."""
    automask = {"niter": 100, "usemask": "auto-multithresh", "minpercentchange": -1.0}
    assert "13 task(s) of 5 channel(s)" in _plan_line(tmp_path, ngc5921_ms, automask, "")
    assert "9 task(s) of 7 channel(s)" in _plan_line(tmp_path, ngc5921_ms, dict(automask, niter=0), "")
