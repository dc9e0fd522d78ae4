"""What every batch backend shares: workers as dask-jobqueue jobs, and the driver as a job of its own.

dask-jobqueue's cluster classes render and submit every worker job; a scheduler's module says only
which class, which memory and exclusivity directives (asked of the plan), and how its driver
wrapper is written. What every worker needs whatever the scheduler (offline CASA, dask's memory
thresholds for CASA, the worker process's environment) is exported by the job script's prologue.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Iterator

from tornado.ioloop import PeriodicCallback

from ..imaging import casa_setup
from ..inputs.site_profile import walltime_seconds
from .security import TLS_DIRECTORY, forget_worker_certificates, run_certificates
from .base import Backend, worker_process_config
from .job_workers import has_worker, worker_names
from .network import scheduler_interface

JOB_TEMPLATES = Path(__file__).parents[1] / "jobs"
DRIVER_MEMORY_MIB = 4096  # the driver job: the dask scheduler and the final concatenation

# Workers retire before their job's walltime (10 minutes, or a fifth of a short walltime), staggered
# so they do not all go at once, and the adaptive cluster submits replacements: a cube longer than
# one walltime finishes, and no chunk is cut off by the batch system's kill.
RETIRE_BEFORE_WALLTIME = 600
RETIRE_STAGGER = 300


def mebibytes(n: float) -> int:
    """Whole MiB, rounded up: a memory request must never fall short of the plan."""
    return -(-int(n) // 2**20)


def _env_name(key: str) -> str:
    return "DASK_" + key.upper().replace(".", "__").replace("-", "_")


def config_exports(config: dict) -> list[str]:
    """``config`` as the DASK_* variables a worker's dask reads at import. dask lower-cases the names
    of such variables, so the keys of an environment mapping (MALLOC_TRIM_THRESHOLD_) go inside one
    variable's value, a Python literal that dask merges into the mapping."""
    mappings: dict[str, dict] = {}
    lines = []
    for key, value in config.items():
        parent, _, name = key.rpartition(".")
        if name != name.lower():
            mappings.setdefault(parent, {})[name] = value
        else:
            lines.append(f"export {_env_name(key)}={value}")
    for parent, mapping in mappings.items():
        literal = "{" + ", ".join(f'"{name}": {value!r}' for name, value in mapping.items()) + "}"
        lines.append(f"export {_env_name(parent)}={shlex.quote(literal)}")
    return lines


def worker_prologue(site) -> list[str]:
    """Shell lines before every batch worker: the site's, then offline CASA and the workers' dask configuration."""
    lines = list(site.prologue)
    if site.casa_data:
        lines.append(f"export {casa_setup.DATA_ENV}={shlex.quote(site.casa_data)}")
    return lines + config_exports(worker_process_config())


def _lifetime_args(walltime: str) -> list[str]:
    seconds = walltime_seconds(walltime)
    margin = min(RETIRE_BEFORE_WALLTIME, seconds // 5)
    stagger = min(RETIRE_STAGGER, seconds // 10)
    return ["--lifetime", f"{seconds - margin}s", "--lifetime-stagger", f"{stagger}s"]


class JobqueueBackend(Backend):
    """A batch system reached through one of dask-jobqueue's cluster classes."""

    directive_prefix: str  # '#SBATCH', '#PBS', '#$'
    driver_template: str  # file in jobs/
    queue_directive: str  # format with the queue
    account_directive: str  # format with the account
    driver_log_name = "{run}.driver.log"

    def cluster_class(self):
        raise NotImplementedError

    def job_kwargs(self, plan, site) -> dict:
        """This scheduler's memory, exclusivity and accounting options for dask-jobqueue."""
        raise NotImplementedError

    def jobqueue_kwargs(self, plan, site, run_dir: Path | None = None) -> dict:
        """Keyword arguments for the site's dask-jobqueue cluster class, from the plan."""
        specific = self.job_kwargs(plan, site)
        kwargs = {
            "cores": plan.cores_per_job,
            "processes": plan.processes_per_job,
            "memory": f"{plan.workers_memory_bytes}B",
            "walltime": plan.walltime,
            "queue": site.queue,
            "job_name": "hpc-imager",
            "python": site.python or sys.executable,
            "interface": site.interface,
            "local_directory": site.local_scratch,
            "log_directory": str(run_dir / "logs" / "jobs") if run_dir else None,
            "worker_extra_args": _lifetime_args(plan.walltime),
            **specific,
            "job_extra_directives": list(site.job_directives) + specific.get("job_extra_directives", []),
            "job_script_prologue": worker_prologue(site) + specific.get("job_script_prologue", []),
        }
        return {k: v for k, v in kwargs.items() if v is not None}

    def job_script(self, plan, site, run_dir: Path | None = None) -> str:
        """The job script ``submit`` gives the batch system (the scheduler address and the names of the
        run's certificate files are filled in then)."""
        tls = {}
        if site.tls:
            from distributed.security import Security

            files = Path(run_dir or "<run-directory>") / TLS_DIRECTORY
            tls = {"protocol": "tls://", "security": Security(
                tls_ca_file=f"{files}/.dask-jobqueue.worker.ca_file.<random>",
                tls_worker_cert=f"{files}/.dask-jobqueue.worker.cert.<random>",
                tls_worker_key=f"{files}/.dask-jobqueue.worker.key.<random>")}
        scheme = "tls" if site.tls else "tcp"
        job = self.cluster_class().job_cls(scheduler=f"{scheme}://<scheduler-address>:<port>", name="hpc-imager-worker",
                                           **self.jobqueue_kwargs(plan, site, run_dir), **tls)
        return job.job_script()

    def check_site(self, site) -> None:
        scheduler_interface(site)

    def certificates(self, site, run_dir: Path):
        return run_certificates(run_dir) if site.tls else super().certificates(site, run_dir)

    @contextlib.contextmanager
    def _client(self, plan, site, run_dir: Path) -> Iterator:
        """dask-jobqueue's cluster for the site, kept at the plan's number of jobs.

        ``adapt(minimum_jobs=maximum_jobs=jobs)`` submits a replacement whenever a job ends (cancelled,
        node lost, walltime), so the run keeps its width. Closing the cluster cancels every job.
        """
        from distributed import Client

        from .lost_jobs import LOST_JOB_CHECK_SECONDS, LostJobs

        interface = scheduler_interface(site)  # refused here, before any job is submitted
        casa_setup.configure_offline()
        cluster_class = self.cluster_class()
        # Importing dask_jobqueue makes SIGINT exit the process with status 0 (dask_jobqueue.runner sets
        # a handler at import); Ctrl-C must instead unwind through here so the jobs are cancelled.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with self.certificates(site, run_dir) as (security, tls_directory):
            cluster = cluster_class(
                scheduler_options={"dashboard_address": site.dashboard_address, "interface": interface},
                security=security, shared_temp_directory=str(tls_directory) if tls_directory else None,
                **self.jobqueue_kwargs(plan, site, run_dir))
            lost = LostJobs(cluster)
            cluster.scheduler.add_plugin(lost)
            watchdog = PeriodicCallback(lost, LOST_JOB_CHECK_SECONDS * 1000)
            try:
                cluster.adapt(minimum_jobs=plan.jobs, maximum_jobs=plan.jobs)
                cluster.loop.add_callback(watchdog.start)
                with Client(cluster) as client:
                    yield client
            finally:
                cluster.loop.add_callback(watchdog.stop)
                previous = signal.signal(signal.SIGINT, lambda *_: _cancel_now_and_exit(cluster))
                try:
                    cluster.close()  # cancels every job it submitted
                finally:
                    signal.signal(signal.SIGINT, previous)
                    forget_worker_certificates(cluster)

    def job_counts(self, client) -> dict[str, int] | None:
        connected = worker_names(client.scheduler_info())
        jobs = list(client.cluster.workers)
        running = sum(has_worker(job, connected) for job in jobs)
        return {"pending": len(jobs) - running, "running": running}

    def driver_script(self, spec, site, site_argument: str, cube_toml: Path) -> str:
        """The wrapper (a template in ``jobs/``) that runs the driver as a job, filled in for this cube."""
        run_dir = spec.run_directory.resolve()
        directives = [self.queue_directive.format(site.queue)] if site.queue else []
        directives += [self.account_directive.format(site.account)] if site.account else []
        values = {
            "walltime": site.walltime_max,
            "driver_memory": f"{DRIVER_MEMORY_MIB}M",
            "driver_memory_mb": f"{DRIVER_MEMORY_MIB}mb",
            "driver_vmem": f"{DRIVER_MEMORY_MIB * 2}M",  # address space, as h_vmem counts it
            "log": shlex.quote(str(run_dir.parent / self.driver_log_name.format(run=run_dir.name))),
            "directives": "\n".join(f"{self.directive_prefix} {d}" for d in directives + list(site.job_directives)),
            "prologue": "\n".join(site.prologue),
            "workdir": shlex.quote(str(Path(cube_toml).resolve().parent)),
            "run_json": shlex.quote(str(run_dir / "run.json")),
            "python": shlex.quote(site.python or sys.executable),
            "site": shlex.quote(str(Path(site_argument).resolve()) if site_argument.endswith(".toml") else site_argument),
            "cube_toml": shlex.quote(str(Path(cube_toml).resolve())),
        }
        return Template((JOB_TEMPLATES / self.driver_template).read_text()).substitute(values)


def _cancel_now_and_exit(cluster) -> None:
    """A second Ctrl-C while jobs are being cancelled: cancel them in one command and leave."""
    job_ids = [job.job_id for job in list(cluster.workers.values()) if getattr(job, "job_id", None)]
    if job_ids:
        subprocess.run(shlex.split(cluster.job_cls.cancel_command) + job_ids, capture_output=True, timeout=30)
    os._exit(130)
