"""Wrapper scripts that run the driver itself as a batch job (templates in ``jobs/``).

The driver job needs one core and a few GiB (the dask scheduler and the final concatenation); it
lives as long as the site allows, and its workers are the usual dask-jobqueue jobs it submits.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from string import Template

from .cube_spec import CubeSpec
from .site_profile import SiteProfile

TEMPLATES = Path(__file__).with_name("jobs")
TEMPLATE_FOR = {"slurm": "slurm.sbatch", "pbs": "pbs.qsub", "sge": "sge.qsub"}
DIRECTIVE_PREFIX = {"slurm": "#SBATCH", "pbs": "#PBS", "sge": "#$"}
DRIVER_MEMORY_MIB = 4096


def _scheduler_directives(site: SiteProfile) -> list[str]:
    queue, account = {
        "slurm": ("--partition={}", "--account={}"),
        "pbs": ("-q {}", "-A {}"),
        "sge": ("-q {}", "-P {}"),
    }[site.scheduler]
    lines = [queue.format(site.queue)] if site.queue else []
    lines += [account.format(site.account)] if site.account else []
    return lines + list(site.job_directives)


def render_driver_script(spec: CubeSpec, site: SiteProfile, site_argument: str, cube_toml: Path) -> str:
    """The wrapper for ``site``'s batch system, filled in for this cube."""
    if site.scheduler not in TEMPLATE_FOR:
        raise ValueError(f"site '{site.name}' runs workers locally; run `hpc_imager submit` directly")
    run_dir = spec.run_directory.resolve()
    prefix = DIRECTIVE_PREFIX[site.scheduler]
    log = run_dir.parent / f"{run_dir.name}.driver-%j.log" if site.scheduler == "slurm" else \
        run_dir.parent / f"{run_dir.name}.driver.log"
    values = {
        "walltime": site.walltime_max,
        "driver_memory": f"{DRIVER_MEMORY_MIB}M",
        "driver_memory_mb": f"{DRIVER_MEMORY_MIB}mb",
        "driver_vmem": f"{DRIVER_MEMORY_MIB * 2}M",  # address space, as h_vmem counts it
        "log": shlex.quote(str(log)),
        "directives": "\n".join(f"{prefix} {d}" for d in _scheduler_directives(site)),
        "prologue": "\n".join(site.prologue),
        "workdir": shlex.quote(str(Path(cube_toml).resolve().parent)),
        "run_json": shlex.quote(str(run_dir / "run.json")),
        "python": shlex.quote(site.python or sys.executable),
        "site": shlex.quote(str(Path(site_argument).resolve()) if site_argument.endswith(".toml") else site_argument),
        "cube_toml": shlex.quote(str(Path(cube_toml).resolve())),
    }
    return Template((TEMPLATES / TEMPLATE_FOR[site.scheduler]).read_text()).substitute(values)
