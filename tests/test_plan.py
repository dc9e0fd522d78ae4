"""The memory plan and the job scripts dask-jobqueue renders from it, for each scheduler × policy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import run_cli, write_cube_toml
from dask.utils import parse_bytes

from hpc_imager.backends import backend_for
from hpc_imager.inputs.cube_spec import parse_cube_spec
from hpc_imager.inputs.site_profile import SiteProfile, parse_site
from hpc_imager.sizing.estimate import (
    MEMORY_TERMS,
    REFIT_SHORTFALL,
    UNMEASURED_SHORTFALL,
    MsFacts,
    TaskEstimate,
    estimate_task,
)
from hpc_imager.sizing.plan import PlanRefused, make_plan, renderable_limit, shared_plan

GOLDEN = Path(__file__).with_name("golden")
GIB = 2**30


def site(scheduler: str, policy: str, **fields) -> SiteProfile:
    return SiteProfile(name=f"test-{scheduler}", scheduler=scheduler, queue="work", account="astro",
                       node_cores=16, node_memory="64GiB", memory_policy=policy, python="/opt/venv/bin/python",
                       prologue=["module load casa-deps"], job_directives=["--comment=golden"] if scheduler == "slurm" else [],
                       walltime_default="06:00:00", walltime_max="48:00:00", **fields)


def spec(workers=None, channels_per_task=4, **tclean):
    return parse_cube_spec({"tclean": {"vis": "x.ms", "imagename": "cube", "imsize": [2048, 2048], **tclean},
                            "parallel": {"channels_per_task": channels_per_task, "workers": workers},
                            "run": {"directory": "/shared/run"}}, Path("/shared"))


def task(gib: float, seconds: float | None = None, shortfall: float = UNMEASURED_SHORTFALL) -> TaskEstimate:
    return TaskEstimate(gib, seconds, 2048 * 2048, 4, "default", {}, shortfall)


def test_shared_memory_arithmetic():
    plan = make_plan(spec(workers=40), site("slurm", "shared"), task(3.0), chunks=100)
    need = 3 * GIB + GIB // 4  # task + worker base
    assert plan.worker_need_bytes == need
    assert plan.worker_memory_limit_bytes == parse_bytes("4.07 GiB")  # need × 1.25 = 4.0625 GiB, up to 0.01 GiB
    assert plan.processes_per_job == 14  # 15 limits of 4.07 GiB fit in 64 GiB - 0.5 GiB; 40 workers in 3 jobs
    assert plan.jobs == 3 and plan.workers == 42
    assert plan.job_memory_bytes == 14 * plan.worker_memory_limit_bytes + GIB // 2
    assert plan.threads_per_worker == 1 and plan.cores_per_job == 14


def test_cubes_submitted_together_share_workers_sized_for_the_largest_task_and_all_chunks():
    small = make_plan(spec(workers=40), site("slurm", "shared"), task(1.0, 600.0), chunks=100)
    large = make_plan(spec(workers=40), site("slurm", "shared"), task(3.0, 60.0), chunks=20)
    shared = shared_plan([small, large])
    assert shared.worker_memory_limit_bytes == large.worker_memory_limit_bytes  # any worker may get the large task
    assert shared.chunks == 120 and shared.workers == 42
    assert shared.task_seconds == 600.0  # the walltime allows the longest task


def test_dedicated_turns_dask_memory_management_off_and_asks_for_the_node():
    plan = make_plan(spec(workers=8), site("pbs", "dedicated"), task(3.0), chunks=100)
    assert plan.worker_memory_limit_bytes == 0
    assert plan.job_memory_bytes == 64 * GIB
    assert (plan.processes_per_job, plan.jobs) == (8, 1)


def test_a_probe_is_worth_it_only_where_the_need_changes_the_plan():
    """Shared: the limits follow the need. Dedicated: only when a need as far over the model's as the
    model may fall short would fit fewer workers on a node (16 cores, 63.5 GiB usable: 16 workers of
    up to 3.97 GiB of need, task plus the 0.25 GiB worker base)."""
    assert make_plan(spec(workers=8), site("slurm", "shared"), task(0.1, shortfall=REFIT_SHORTFALL),
                     chunks=100).sized_by_need()
    # a form the memory matrix did not measure: 5 × (1.0 + 0.25) GiB no longer fits 16 workers
    assert not make_plan(spec(workers=16), site("pbs", "dedicated"), task(0.5), chunks=100).sized_by_need()
    assert make_plan(spec(workers=16), site("pbs", "dedicated"), task(1.0), chunks=100).sized_by_need()
    # a measured form: only the refit model's error, 1.25 × (3.0 + 0.25) GiB
    assert not make_plan(spec(workers=16), site("pbs", "dedicated"), task(1.0, shortfall=REFIT_SHORTFALL),
                         chunks=100).sized_by_need()
    assert make_plan(spec(workers=16), site("pbs", "dedicated"), task(3.0, shortfall=REFIT_SHORTFALL),
                     chunks=100).sized_by_need()
    assert make_plan(spec(workers=2), site("pbs", "dedicated"), task(20.0), chunks=100).sized_by_need()  # 5 × no longer fits


def test_several_cubes_share_the_largest_shortfall():
    """One set of workers runs every cube's tasks: a cube of an unmeasured form keeps its margin."""
    measured = make_plan(spec(workers=16), site("pbs", "dedicated"), task(1.0, shortfall=REFIT_SHORTFALL), 10)
    unmeasured = make_plan(spec(workers=16), site("pbs", "dedicated"), task(0.9), 10)
    assert not measured.sized_by_need()
    assert shared_plan([measured, unmeasured]).sized_by_need()


def test_walltime_from_calibration_never_above_the_maximum():
    assert make_plan(spec(workers=10), site("slurm", "shared"), task(1.0), 100).walltime == "06:00:00"
    plan = make_plan(spec(workers=10), site("slurm", "shared"), task(1.0, seconds=600), 100)
    assert plan.walltime == "02:35:00"  # 10 tasks per worker × 600 s × 1.5 + 300 s start-up
    assert make_plan(spec(workers=1), site("slurm", "shared"), task(1.0, seconds=3000), 100).walltime == "48:00:00"


@pytest.mark.parametrize("estimate, message", [
    (task(70.0), "one task needs 87.82 GiB per worker (70.00 GiB for 4 channels of 4194304 pixels, plus worker base and headroom) but a test-slurm node offers 63.50 GiB: use fewer channels_per_task, a smaller image, or another site"),
    (task(1.0, seconds=200_000), "one task is estimated at 55.6 h"),
])
def test_a_plan_that_cannot_fit_is_refused_with_numbers_and_what_to_change(estimate, message):
    with pytest.raises(PlanRefused) as refused:
        make_plan(spec(), site("slurm", "shared"), estimate, chunks=10)
    assert message in str(refused.value)


def test_run_directory_must_be_on_the_shared_file_system():
    with pytest.raises(PlanRefused, match="not under test-slurm's shared file system /lustre"):
        make_plan(spec(), site("slurm", "shared", shared_directory="/lustre"), task(1.0), 10)


def test_default_model_and_calibration():
    default = estimate_task(spec(channels_per_task=4), site("slurm", "shared"))
    assert default.model == "default"
    assert default.task_peak_gib == pytest.approx(sum(default.terms_gib.values()))
    assert default.terms_gib["image_cube"] == pytest.approx(MEMORY_TERMS["image_cube"] * 2048 * 2048 * 4 / GIB)
    mosaic = estimate_task(spec(gridder="mosaic"), site("slurm", "shared"))
    assert mosaic.task_peak_gib > default.task_peak_gib + 2  # the mosaic gridder's screens
    planes = estimate_task(spec(gridder="wproject", wprojplanes=-1, cell=["15arcsec"]), site("slurm", "shared"),
                           MsFacts(max_w_wavelengths=2800))
    assert planes.terms_gib["wproject_cf"] <= 64 / 4 + 1e-9  # capped at a quarter of the node's 64 GiB
    calibrated = site("slurm", "shared", calibration=[
        {"gridder": "standard", "deconvolver": "hogbom", "base_gib": 0.5, "bytes_per_pixel_channel": 50,
         "seconds_base": 2, "seconds_per_megapixel_channel": 0.25}])
    fitted = estimate_task(spec(), calibrated)
    assert fitted.model == "calibration"
    assert fitted.task_peak_gib == pytest.approx(0.5 + 50 * 2048 * 2048 * 4 / GIB)
    assert fitted.task_seconds == pytest.approx(2 + 0.25 * 2048 * 2048 * 4 / 1e6)


@pytest.mark.parametrize("scheduler", ["slurm", "pbs", "sge"])
@pytest.mark.parametrize("policy", ["dedicated", "shared"])
def test_rendered_job_script_matches_golden(scheduler, policy):
    profile = site(scheduler, policy)
    plan = make_plan(spec(workers=12), profile, task(3.0), chunks=100)
    script = backend_for(profile).job_script(plan, profile, Path("/shared/run"))
    golden = GOLDEN / f"{scheduler}-{policy}.sh"
    if os.environ.get("HPC_IMAGER_WRITE_GOLDEN"):
        golden.write_text(script)
    assert_matches_golden(script, golden.read_text())


def test_a_site_that_turns_tls_off_renders_plain_tcp():
    profile = site("slurm", "shared", tls=False)
    script = backend_for(profile).job_script(make_plan(spec(workers=12), profile, task(3.0), chunks=100), profile,
                                             Path("/shared/run"))
    assert "dask_worker tcp://<scheduler-address>:<port>" in script and "--tls-" not in script


def _lines(script: str) -> list[str]:
    return [line.rstrip() for line in script.splitlines() if line.strip()]


def assert_matches_golden(script: str, golden: str) -> None:
    """Every line of the golden, in order; blank lines aside, the script may differ only by scheduler
    directives dask-jobqueue adds itself (its main branch adds ``#SBATCH -N 1`` and an epilogue line),
    so the goldens hold on every dask-jobqueue pyproject allows while hpc_imager's own lines are exact."""
    got, want = _lines(script), _lines(golden)
    regenerate = "if the change is meant: HPC_IMAGER_WRITE_GOLDEN=1 pytest tests/test_plan.py -k golden"
    assert [line for line in got if line in want] == want, f"a line of the golden is missing or moved; {regenerate}"
    added = [line for line in got if line not in want]
    assert all(line.startswith(("#SBATCH ", "#PBS ", "#$ ")) for line in added), f"new lines {added}; {regenerate}"


def test_golden_comparison_tolerates_only_added_directives():
    golden = "#!/usr/bin/env bash\n#SBATCH -n 1\n#SBATCH --mem=1M\nmodule load x\npython -m w\n"
    assert_matches_golden(golden.replace("#SBATCH -n 1\n", "#SBATCH -n 1\n#SBATCH -N 1\n") + "\n", golden)
    for wrong in (golden.replace("--mem=1M", "--mem=2M"), golden.replace("module load x\n", ""),
                  golden.replace("python -m w", "python -m w --extra"), golden + "rm -rf /\n"):
        with pytest.raises(AssertionError):
            assert_matches_golden(wrong, golden)


def test_golden_scripts_carry_the_plan():
    """What the goldens must say, so a wrong golden cannot pass unnoticed."""
    slurm = (GOLDEN / "slurm-shared.sh").read_text()
    assert "#SBATCH --mem=50525M" in slurm  # 12 workers × 4.07 GiB + 0.5 GiB, in whole MiB up
    assert "--memory-limit 4.07GiB --nworkers 12" in slurm and "#SBATCH -t 06:00:00" in slurm
    assert "#SBATCH --comment=golden" in slurm and "module load casa-deps" in slurm
    # TLS by default: the worker talks tls:// with the run's certificate files from the run directory
    assert "dask_worker tls://<scheduler-address>:<port>" in slurm and "--protocol tls://" in slurm
    assert "--tls-key /shared/run/tls/.dask-jobqueue.worker.key.<random>" in slurm
    # workers retire 10 min before the 6 h walltime, staggered by 5 min, and are replaced
    assert "--lifetime 21000s --lifetime-stagger 300s" in slurm
    assert "DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=False" in slurm
    assert "#SBATCH --exclusive" in (GOLDEN / "slurm-dedicated.sh").read_text()
    assert "--memory-limit 0.0B" in (GOLDEN / "slurm-dedicated.sh").read_text()  # distributed: no limit
    assert "#PBS -l select=1:ncpus=12:mem=50525mb" in (GOLDEN / "pbs-shared.sh").read_text()
    assert "#PBS -l place=excl" in (GOLDEN / "pbs-dedicated.sh").read_text()
    sge = (GOLDEN / "sge-shared.sh").read_text()
    # h_vmem per slot: (4.07 GiB limit + 2 GiB address-space overhead) / 12 slots; mem_free: job / 12
    assert "#$ -l h_vmem=518M,mem_free=4211M" in sge and "#$ -pe smp 12" in sge and "#$ -P astro" in sge


def test_shipped_site_profiles_are_valid():
    shipped = Path(__file__).parents[1] / "site_profiles"
    names = sorted(p.stem for p in shipped.glob("*.toml"))
    assert names == ["example-pbs", "example-sge", "local", "nrao-slurm"]
    for path in shipped.glob("*.toml"):
        parse_site(path.read_text(), path.stem, str(path))


def test_sites_cli_list_show_validate(tmp_path):
    listing = run_cli("sites", "list").stdout
    assert "nrao-slurm" in listing and "local" in listing

    mine = tmp_path / "sites"
    mine.mkdir()
    (mine / "nrao-slurm.toml").write_text('description = "installed by the sysadmin"\nscheduler = "slurm"\n'
                                          'node_cores = 8\nnode_memory = "32GiB"\nmemory_policy = "dedicated"\n')
    shown = json.loads(run_cli("sites", "show", "nrao-slurm", env={"HPC_IMAGER_SITE_DIRS": str(mine)}).stdout)
    assert shown["description"] == "installed by the sysadmin" and shown["node_cores"] == 8

    bad = tmp_path / "bad.toml"
    bad.write_text('scheduler = "slurm"\nnode_cores = 8\nnode_memory = "8GiB"\nmemory_policy = "shared"\nqueeu = "x"\n')
    result = run_cli("sites", "validate", bad, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpc_imager: error: {bad}: unknown field 'queeu' (did you mean 'queue'?)"
    bad.write_text('scheduler = "slurm"\nnode_cores = 8\nnode_memory = "lots"\nmemory_policy = "shared"\n')
    result = run_cli("sites", "validate", bad, check=False)
    assert "node_memory: not an amount of memory like '16GiB': 'lots'" in result.stderr
    assert run_cli("sites", "validate", Path(__file__).parents[1] / "site_profiles" / "nrao-slurm.toml").returncode == 0
    (tmp_path / "cube.toml").write_text('[tclean]\nvis = "x.ms"\nimagename = "c"\n')
    unknown = run_cli("submit", "--site", "nrao-slrum", tmp_path / "cube.toml", check=False)
    assert unknown.returncode == 2 and "did you mean 'nrao-slurm'" in unknown.stderr


@pytest.mark.casa
def test_plan_and_estimate_cli_on_ngc5921(tmp_path, ngc5921_ms):
    cube = write_cube_toml(tmp_path, ngc5921_ms, {"nchan": -1}, {"channels_per_task": 4})
    site_file = tmp_path / "shared.toml"
    site_file.write_text('scheduler = "slurm"\nnode_cores = 4\nnode_memory = "8GiB"\nmemory_policy = "shared"\n'
                         'python = "/opt/venv/bin/python"\n')
    planned = json.loads(run_cli("plan", "--site", site_file, cube, "--json").stdout)
    assert set(planned) >= {"task_peak_gib", "worker_memory_limit_bytes", "job_memory_bytes", "processes_per_job",
                            "threads_per_worker", "jobs", "workers", "walltime", "job_script"}
    assert planned["workers"] == 4 * planned["jobs"] or planned["workers"] == 16
    assert f"--mem={-(-planned['job_memory_bytes'] // 2**20)}M" in planned["job_script"]  # whole MiB, up
    estimated = json.loads(run_cli("estimate", cube, "--json").stdout)
    assert estimated["task_peak_gib"] == pytest.approx(planned["task_peak_gib"])
    refused = run_cli("plan", "--site", site_file, cube, "--channels-per-task", "63", "--json", check=False)
    assert refused.returncode == 0, "63 channels of 256² still fit in 8 GiB"
    site_file.write_text(site_file.read_text().replace("8GiB", "1GiB"))
    refused = run_cli("plan", "--site", site_file, cube, check=False)
    assert refused.returncode == 2 and "node offers" in refused.stderr and "fewer channels_per_task" in refused.stderr


def test_site_reference_docs_are_generated_from_the_schema():
    committed = (Path(__file__).parents[1] / "docs" / "site-reference.md").read_text()
    assert committed == run_cli("reference", "site").stdout, "regenerate: python -m hpc_imager reference site > docs/site-reference.md"


@pytest.mark.parametrize("scheduler, directive", [("slurm", "#SBATCH --partition=work"), ("pbs", "#PBS -q work"),
                                                  ("sge", "#$ -q work")])
def test_driver_wrapper_scripts_render_for_each_scheduler(scheduler, directive, tmp_path):
    profile = site(scheduler, "shared")
    script = backend_for(profile).driver_script(spec(), profile, "my-site", tmp_path / "cube.toml")
    assert directive in script and "module load casa-deps" in script
    assert f"-m hpc_imager submit --site my-site {tmp_path / 'cube.toml'} $resume" in script
    assert "[ -f /shared/run/run.json ] && echo --resume" in script
    assert "$walltime" not in script and "48:00:00" in script


def test_the_same_plan_with_more_memory():
    plan = make_plan(spec(workers=40), site("slurm", "shared"), task(3.0), chunks=100)
    more = plan.with_more_memory(chunks=5)
    assert more.worker_need_bytes == 2 * plan.worker_need_bytes
    assert more.worker_memory_limit_bytes == parse_bytes("8.13 GiB")  # 6.5 GiB × 1.25 = 8.125, up to 0.01 GiB
    assert more.chunks == 5 and more.workers == 5  # no more workers than chunks
    assert more.job_memory_bytes == more.processes_per_job * more.worker_memory_limit_bytes + GIB // 2
    with pytest.raises(PlanRefused, match="node offers"):
        more.with_more_memory().with_more_memory().with_more_memory()


def test_backends_take_their_memory_figures_from_the_plan():
    plan = make_plan(spec(workers=12), site("sge", "shared"), task(3.0), chunks=100)
    kwargs = backend_for(site("sge", "shared")).jobqueue_kwargs(plan, site("sge", "shared"))
    assert kwargs["memory"] == f"{plan.workers_memory_bytes}B" == f"{12 * plan.worker_memory_limit_bytes}B"
    h_vmem = -(-plan.worker_address_space_bytes // 12) // 2**20 + 1
    assert kwargs["resource_spec"].startswith(f"h_vmem={h_vmem}M,")


def test_a_measured_need_gets_room_for_the_terminate_threshold_only():
    """A probe measured the worker process itself: no worker base inside the limit, no model headroom;
    the nanny's memory goes into the job beside the limits."""
    probed = TaskEstimate(2.0, 30.0, 2048 * 2048, 4, "probe", {}, 1.0)
    plan = make_plan(spec(workers=12), site("slurm", "shared"), probed, chunks=100)
    assert plan.worker_need_bytes == 2 * GIB
    assert plan.worker_memory_limit_bytes == renderable_limit(2 * GIB / 0.95) == parse_bytes("2.11 GiB")
    assert plan.worker_memory_limit_bytes <= 1.2 * 2 * GIB / 1.05  # within 20 % of the peak the probe measured
    assert plan.job_memory_bytes == 12 * (plan.worker_memory_limit_bytes + GIB // 4) + GIB // 2
    more = plan.with_more_memory()
    assert more.worker_need_bytes == 4 * GIB and more.estimate_model == "probe"


def test_limits_render_exactly_in_dask_jobqueue():
    from dask.utils import format_bytes

    for need in (0.3 * GIB, 0.999 * GIB, 1.0 * GIB, 4.0625 * GIB, 37.1234 * GIB):
        limit = renderable_limit(need)
        assert need <= limit < need + 0.011 * GIB
        assert parse_bytes(format_bytes(limit)) == limit


def test_a_local_site_plans_one_machine_and_refuses_more_jobs():
    local = site("local", "dedicated")
    assert local.max_jobs == 1  # not the batch sites' default of 100
    plan = make_plan(spec(channels_per_task=1), local, task(0.5), chunks=200)
    assert (plan.jobs, plan.workers) == (1, 16)  # the node's cores, not 100 nodes' worth
    assert site("slurm", "dedicated").max_jobs == 100
    with pytest.raises(ValueError, match="max_jobs: a 'local' site runs on this one machine"):
        site("local", "dedicated", max_jobs=4)


def test_the_assembly_switches_to_virtual_where_one_placing_thread_would_be_the_critical_path():
    from hpc_imager.sizing.plan import choose_assembly

    reference = {"imsize": [8000, 8000]}  # the seed's cube: one channel a task of 208 s (CASA Memo 13)
    big = site("slurm", "dedicated")

    def plan(workers, seconds=208.0):
        estimate = TaskEstimate(2.0, seconds, 8000 * 8000, 1, "default", {}, UNMEASURED_SHORTFALL)
        return make_plan(spec(workers=workers, channels_per_task=1, **reference), big, estimate, 7677)

    few, many = choose_assembly(plan(2)), choose_assembly(plan(1000))
    assert (few.kind, many.kind) == ("placed", "virtual")
    assert many.produced_bytes_per_second > many.placing_bytes_per_second > few.produced_bytes_per_second
    assert "critical path" in many.reason and "keeps up" in few.reason
    assert choose_assembly(plan(2, seconds=None)).kind == "placed"  # the fastest measured imaging: still 2 workers' worth
    assert choose_assembly(plan(1000), "placed").kind == "placed"  # [run] or the site forces either
    assert choose_assembly(plan(2), "virtual").kind == "virtual"
    assert choose_assembly(plan(1000), common_beam=True).kind == "placed"  # tclean's restore needs paged images
    with pytest.raises(PlanRefused, match="restoringbeam='common'"):
        choose_assembly(plan(2), "virtual", common_beam=True)
