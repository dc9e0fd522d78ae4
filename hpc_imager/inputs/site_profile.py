"""Site profiles: *where* workers run. One TOML per site, kept by its sysadmins, validated here.

``--site NAME`` looks first in the directories named by ``HPC_IMAGER_SITE_DIRS`` (a sysadmin's
installed sites win), then in the profiles shipped with hpc_imager; ``--site path/to/site.toml``
reads that file. The built-in ``local`` is this machine (a LocalCluster, dedicated).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal, Optional

import psutil
from dask.utils import parse_bytes
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError
from . import shell_safety

SITE_DIRS_ENV = "HPC_IMAGER_SITE_DIRS"
BUILTIN_SITES = Path(__file__).parents[1] / "site_profiles"

_WALLTIME = re.compile(r"^(\d+):([0-5]\d):([0-5]\d)$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-]*:\d{1,5}$")


class SiteError(UserError):
    """A site that cannot be found or is not valid; the message is one line."""


def walltime_seconds(text: str) -> int:
    hours, minutes, seconds = map(int, _WALLTIME.match(text).groups())
    return hours * 3600 + minutes * 60 + seconds


def format_walltime(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _bytes(value: str) -> str:
    try:
        parse_bytes(value)
    except ValueError:
        raise ValueError(f"not an amount of memory like '16GiB': {value!r}") from None
    return value


def _walltime(value: str) -> str:
    if not _WALLTIME.match(value):
        raise ValueError(f"not a walltime like '12:00:00': {value!r}")
    return value


class Calibration(BaseModel):
    """Fitted by ``hpc_imager calibrate`` on this site's workers for one gridder and deconvolver."""

    model_config = ConfigDict(extra="forbid")

    gridder: str
    deconvolver: str
    base_gib: Annotated[float, Field(ge=0, description="Peak RSS of a worker imaging a task of no pixels.")]
    bytes_per_pixel_channel: Annotated[float, Field(gt=0, description="Peak RSS per image pixel per channel of a task.")]
    seconds_base: Annotated[float, Field(ge=0, description="Wall time of a task of no pixels.")] = 0.0
    seconds_per_megapixel_channel: Annotated[float, Field(ge=0, description="Wall time per million pixel-channels.")] = 0.0
    fitted_on: Annotated[str, Field(description="When and from what it was fitted.")] = ""


class SiteProfile(BaseModel):
    """A site: its batch system, its nodes, and how memory is shared on them."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(description="The site's name (default: the file's stem).")] = ""
    description: Annotated[str, Field(description="One line for `sites list`.")] = ""
    scheduler: Annotated[Literal["local", "slurm", "pbs", "sge"], Field(description="The batch system; 'local' runs workers on this machine.")]
    queue: Annotated[Optional[str], Field(description="Partition (Slurm) or queue (PBS, SGE).")] = None
    account: Annotated[Optional[str], Field(description="Account (Slurm) or project (PBS, SGE) charged for the jobs.")] = None
    node_cores: Annotated[int | Literal["auto"], Field(description="Cores of one compute node ('auto': this machine's, for local).")]
    node_memory: Annotated[str, Field(description="Memory of one compute node that jobs may use, e.g. '192GiB' ('auto': this machine's, for local).")]
    memory_policy: Annotated[Literal["dedicated", "shared"], Field(description="'dedicated': nodes are exclusively ours (dask memory limit off, the job asks for the node); 'shared': other jobs share the node (explicit limits).")]
    memory_headroom: Annotated[float, Field(ge=1.0, description="Factor on the estimated need of a worker when its memory limit is set.")] = 1.25
    worker_base: Annotated[str, Field(description="A dask worker's own memory beside its task (nanny, comms).")] = "0.25GiB"
    job_memory_overhead: Annotated[str, Field(description="Memory a job asks for beyond its workers' limits (shell, job step).")] = "0.5GiB"
    virtual_memory_overhead: Annotated[str, Field(description="Address space a worker maps beyond its resident memory (libraries, thread arenas); SGE's h_vmem limits address space.")] = "2GiB"
    walltime_default: Annotated[str, Field(description="Walltime of a job when no calibration says better.")] = "04:00:00"
    walltime_max: Annotated[str, Field(description="The longest walltime the queue allows.")] = "24:00:00"
    assembly: Annotated[Literal["auto", "placed", "virtual"], Field(description="The final cube's assembly for this site's runs, as [run] assembly (which wins when not 'auto'); e.g. 'virtual' where the driver's file system is slow to write.")] = "auto"
    max_jobs: Annotated[int, Field(ge=1, description="Most jobs one run may have queued or running at once (local: 1, this machine).")] = 100
    worker_wait: Annotated[str, Field(description="How long to wait for the first worker (queue time) before giving up.")] = "04:00:00"
    job_directives: Annotated[list[str], Field(description="Extra scheduler directives, e.g. '--constraint=ib' (without '#SBATCH').")] = []
    prologue: Annotated[list[str], Field(description="Shell lines run before each worker (and the driver job) starts: module loads, environment. Each is shell as written, so each must be one line (no newline, carriage return or NUL).")] = []
    python: Annotated[Optional[str], Field(description="The python that workers run (default: the driver's).")] = None
    interface: Annotated[Optional[str], Field(description="Network interface the workers listen on, on the compute nodes, e.g. 'ib0' (and the dask scheduler's, on the driver's host, unless driver_interface names another).")] = None
    driver_interface: Annotated[Optional[str], Field(description="Network interface of the driver's host (login node) that the compute nodes reach it on: the dask scheduler listens there (default: interface; neither: distributed's choice). `submit` refuses one that does not exist there, is down, has no IPv4 address or is loopback, before any job is submitted.")] = None
    local_scratch: Annotated[Optional[str], Field(description="Node-local scratch directory for workers, e.g. '$TMPDIR' or '/lustre/scratch/$USER'.")] = None
    shared_directory: Annotated[Optional[str], Field(description="Run directories must be under this shared file system (workers write there).")] = None
    disk_quota: Annotated[Optional[str], Field(description="Space a run may fill on a file system it writes to (run directory, products) when a quota holds it below the free space the file system shows, e.g. '10TiB': `plan` and `submit` refuse a cube that needs more.")] = None
    ms_read_rate: Annotated[str, Field(description="Bytes per second one worker reads a measurement set at, e.g. '500MB' (a judgement for a parallel file system's client; measure yours with `dd`): every task reads the MS's rows whole whatever channels it selects, so the default channels_per_task counts one read of the whole MS per task at this rate.")] = "500MB"
    casa_data: Annotated[Optional[str], Field(description="CASA measures data on the nodes (default: the casadata package's).")] = None
    tls: Annotated[bool, Field(description="Batch sites: the scheduler, workers and client talk TLS with a certificate made for each run (its key owner-only in the run directory, removed when the run ends). Turn it off only with the reason in a comment beside it.")] = True
    dashboard_address: Annotated[str, Field(description="Where the dask dashboard listens, 'host:port' (port 0: any free port). Loopback by default: the driver prints the `ssh -L` line that reaches it from a laptop.")] = "127.0.0.1:0"
    sge_parallel_environment: Annotated[str, Field(description="SGE parallel environment that gives a job several slots on one node.")] = "smp"
    calibration: Annotated[list[Calibration], Field(description="Memory and time models fitted by `hpc_imager calibrate`.")] = []

    _check_memory = field_validator("worker_base", "job_memory_overhead", "virtual_memory_overhead", "ms_read_rate")(
        classmethod(lambda cls, v: _bytes(v)))
    _check_quota = field_validator("disk_quota")(classmethod(lambda cls, v: v if v is None else _bytes(v)))
    _check_walltime = field_validator("walltime_default", "walltime_max", "worker_wait")(
        classmethod(lambda cls, v: _walltime(v)))

    # What reaches a job script or a command line (see shell_safety for where and why).
    @field_validator("name", "queue", "account", "interface", "sge_parallel_environment")
    @classmethod
    def _one_word(cls, value):
        return value if value in (None, "") else shell_safety.name(value)

    @field_validator("python", "casa_data", "shared_directory")
    @classmethod
    def _plain_path(cls, value):
        return value if value is None else shell_safety.path(value)

    @field_validator("local_scratch")
    @classmethod
    def _path_with_variables(cls, value):
        return value if value is None else shell_safety.path(value, variables=True)

    @field_validator("job_directives")
    @classmethod
    def _directives(cls, value):
        return [shell_safety.directive(line) for line in value]

    @model_validator(mode="before")
    @classmethod
    def _one_machine(cls, data):
        """'local' workers are processes on this one machine: one job, whatever the profile's default."""
        if isinstance(data, dict) and data.get("scheduler") == "local":
            if data.get("max_jobs", 1) != 1:
                raise ValueError(f"max_jobs: a 'local' site runs on this one machine (1 job), got {data['max_jobs']}")
            data = {**data, "max_jobs": 1}
        return data

    @field_validator("prologue")
    @classmethod
    def _prologue(cls, value):
        return [shell_safety.shell_line(line) for line in value]

    @field_validator("dashboard_address")
    @classmethod
    def _host_and_port(cls, value: str) -> str:
        if not _HOST_PORT.match(value):
            raise ValueError(f"not an address like '127.0.0.1:0' or ':8787': {value!r}")
        return value

    @field_validator("node_memory")
    @classmethod
    def _node_memory(cls, value: str) -> str:
        return value if value == "auto" else _bytes(value)

    @field_validator("node_cores")
    @classmethod
    def _node_cores(cls, value):
        if value != "auto" and value < 1:
            raise ValueError("must be at least 1")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if walltime_seconds(self.walltime_default) > walltime_seconds(self.walltime_max):
            raise ValueError(f"walltime_default {self.walltime_default} is over walltime_max {self.walltime_max}")
        return self

    @property
    def cores(self) -> int:
        return os.cpu_count() or 1 if self.node_cores == "auto" else self.node_cores

    @property
    def node_memory_bytes(self) -> int:
        if self.node_memory == "auto":
            return psutil.virtual_memory().total
        return parse_bytes(self.node_memory)

    def calibration_for(self, gridder: str, deconvolver: str) -> Calibration | None:
        return next((c for c in self.calibration if (c.gridder, c.deconvolver) == (gridder, deconvolver)), None)


def _first_error(error: ValidationError, source: str) -> str:
    err = error.errors()[0]
    field = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(err["loc"][-1]), list(SiteProfile.model_fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{source}: unknown field '{field}'{hint}"
    if err["type"] == "missing":
        return f"{source}: {field}: required but not given"
    message = err["msg"].removeprefix("Value error, ")
    return f"{source}: {field}: {message}" if field else f"{source}: {message}"


def parse_site(text: str, name: str, source: str) -> SiteProfile:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SiteError(f"{source}: not valid TOML: {error}") from None
    data.setdefault("name", name)
    try:
        return SiteProfile.model_validate(data)
    except ValidationError as error:
        raise SiteError(_first_error(error, source)) from None


def site_directories() -> list[Path]:
    """Where named sites are looked for, first match wins."""
    extra = [Path(p) for p in os.environ.get(SITE_DIRS_ENV, "").split(os.pathsep) if p]
    return extra + [BUILTIN_SITES]


def site_path(name: str) -> Path | None:
    for directory in site_directories():
        candidate = directory / f"{name}.toml"
        if candidate.is_file():
            return candidate
    return None


def available_sites() -> dict[str, Path]:
    """Every named site and the file it comes from."""
    found: dict[str, Path] = {}
    for directory in site_directories():
        for path in sorted(directory.glob("*.toml")):
            found.setdefault(path.stem, path)
    return found


def load_site(name_or_path: str) -> SiteProfile:
    """A site by name (installed, then built in) or by path to its TOML."""
    looks_like_path = name_or_path.endswith(".toml") or os.sep in name_or_path
    path = Path(name_or_path) if looks_like_path else site_path(name_or_path)
    if path is None:
        close = difflib.get_close_matches(name_or_path, list(available_sites()), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SiteError(f"unknown site '{name_or_path}'{hint}; `hpc_imager sites list` shows them")
    if not path.is_file():
        raise SiteError(f"{path}: no such site file")
    return parse_site(path.read_text(), path.stem, str(path))
