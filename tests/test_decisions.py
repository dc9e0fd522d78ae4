"""The driver's decisions after a failure (pure functions: no dask, no CASA)."""

from hpc_imager.backends.slurm import SLURM
from hpc_imager.run.decisions import Next, after_failure, ran_out_of_memory


def test_a_failure_is_retried_until_the_retries_are_spent():
    assert after_failure(out_of_memory=False, tries=1, retries=2) is Next.RETRY
    assert after_failure(out_of_memory=False, tries=3, retries=2) is Next.GIVE_UP
    assert after_failure(out_of_memory=False, tries=1, retries=0) is Next.GIVE_UP


def test_a_memory_kill_gets_more_memory_not_the_same_again():
    assert after_failure(out_of_memory=True, tries=1, retries=2) is Next.MORE_MEMORY
    assert after_failure(out_of_memory=True, tries=5, retries=0) is Next.MORE_MEMORY


def test_memory_kills_are_recognised_from_the_error_or_the_logs():
    never_read = iter(())  # logs are read only when a worker died
    assert ran_out_of_memory("MemoryError", "", never_read, SLURM.memory_signs)
    assert ran_out_of_memory("RuntimeError", "std::bad_alloc ... MemoryError", never_read, SLURM.memory_signs)
    assert not ran_out_of_memory("RuntimeError", "table not found", ["memory budget"], SLURM.memory_signs)
    slurm_kill = "slurmstepd: error: StepId=3.batch exceeded memory limit (436183040 > 314572800), being killed"
    assert ran_out_of_memory("KilledWorker", "", ["nothing here", slurm_kill], SLURM.memory_signs)
    nanny = "Worker is at 96% memory usage ... exceeds the memory budget"
    assert ran_out_of_memory("KilledWorker", "", [nanny], SLURM.memory_signs)
    assert not ran_out_of_memory("KilledWorker", "", ["segfault"], SLURM.memory_signs)


def test_a_job_is_lost_once_its_workers_connected_and_have_all_been_gone_a_while():
    from hpc_imager.backends.lost_jobs import lost_jobs, without_workers

    jobs = ["SLURMCluster-0", "SLURMCluster-1", "SLURMCluster-2"]
    started = {"SLURMCluster-0", "SLURMCluster-1"}  # SLURMCluster-2 is still in the queue
    connected = ["SLURMCluster-1-0"]  # one of SLURMCluster-1's two workers is left
    assert without_workers(jobs, started, connected, {}, 100.0) == {"SLURMCluster-0": 100.0}
    assert without_workers(jobs, started, connected, {"SLURMCluster-0": 90.0}, 100.0) == {"SLURMCluster-0": 90.0}
    assert without_workers(jobs, started, ["SLURMCluster-0", "SLURMCluster-1-1"], {"SLURMCluster-0": 90.0}, 100.0) == {}
    assert without_workers(["SLURMCluster-1"], {"SLURMCluster-1"}, ["SLURMCluster-10"], {}, 1.0) == {"SLURMCluster-1": 1.0}
    # a worker its nanny restarts is back within the grace; a cancelled job's are not
    assert lost_jobs({"SLURMCluster-0": 96.0, "SLURMCluster-1": 94.0}, 100.0, grace=5) == ["SLURMCluster-1"]


def test_a_part_is_cut_where_the_target_tiles_begin():
    from hpc_imager.run.concat import tile_rows

    assert tile_rows(8, 8, 7) == [(0, 5), (6, 7)]  # channels 8-13 and 14-15 of tiles 7-13 and 14-20
    assert tile_rows(14, 7, 7) == [(0, 6)]  # aligned: one piece
    assert tile_rows(60, 3, 7) == [(0, 2)]
    assert tile_rows(0, 20, 7) == [(0, 6), (7, 13), (14, 19)]
    assert tile_rows(5, 4, 1) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_a_place_in_flight_freed_goes_to_the_cube_waiting_with_nothing_in_flight():
    """Cubes of one submission share the places in flight (task_loop.Places): a cube holding places
    takes a freed one again only when no cube waits with nothing in flight."""
    import threading
    import time

    from hpc_imager.run.task_loop import Places

    places = Places(2)
    assert places.take(wait=False) and places.take(wait=False) and not places.take(wait=False)
    got = threading.Event()
    waiting = threading.Thread(target=lambda: places.take(wait=True) and got.set(), daemon=True)
    waiting.start()
    deadline = time.time() + 10
    while not places._waiting:  # the other cube is waiting now
        assert time.time() < deadline
        time.sleep(0.01)
    places.give_back()
    assert not places.take(wait=False), "the cube holding a place does not take the freed one"
    assert got.wait(10)
    places.give_back()
    assert places.take(wait=False)
