"""cube.toml: what to image. One pydantic schema drives validation, the CLI overrides and the docs.

``[tclean]`` takes tclean's own keywords with tclean's defaults, so a CASA user can paste them from
a script (the one change: ``specmode`` defaults to ``'cube'``, the only kind of run this tool makes).
``[parallel]`` says how to split the cube; ``[run]`` where the run's bookkeeping lives.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from ..errors import UserError
from . import shell_safety

Float = Union[StrictFloat, StrictInt]
Paths = Union[StrictStr, list[StrictStr]]
StrOrList = Union[StrictStr, list[StrictStr]]
StrOrInt = Union[StrictStr, StrictInt]
StrOrFloat = Union[StrictStr, Float]
IntOrList = Union[StrictInt, list[StrictInt]]
Cell = Union[StrictStr, Float, list[StrictStr], list[Float]]
CubeMode = Literal["cube", "cubedata", "cubesource"]

# tclean's keywords (casatasks 6.7) with their types as a TOML file can write them, and tclean's
# defaults. tests/test_cube_spec.py keeps this table equal to the installed tclean's signature.
TCLEAN_KEYWORDS: dict[str, tuple[Any, Any]] = {
    'vis': (Paths, ...),
    'selectdata': (StrictBool, True),
    'field': (StrOrList, ''),
    'spw': (StrOrList, ''),
    'timerange': (StrOrList, ''),
    'uvrange': (StrOrList, ''),
    'antenna': (StrOrList, ''),
    'scan': (StrOrList, ''),
    'observation': (StrOrInt, ''),
    'intent': (StrOrList, ''),
    'datacolumn': (StrictStr, 'corrected'),
    'imagename': (StrictStr, ...),
    'imsize': (IntOrList, [100]),
    'cell': (Cell, []),
    'phasecenter': (StrOrInt, ''),
    'stokes': (StrictStr, 'I'),
    'projection': (StrictStr, 'SIN'),
    'startmodel': (StrOrList, ''),
    'specmode': (CubeMode, 'cube'),
    'reffreq': (StrictStr, ''),
    'nchan': (StrictInt, -1),
    'start': (StrOrInt, ''),
    'width': (StrOrInt, ''),
    'outframe': (StrictStr, 'LSRK'),
    'veltype': (StrictStr, 'radio'),
    'restfreq': (StrOrList, []),
    'interpolation': (StrictStr, 'linear'),
    'perchanweightdensity': (StrictBool, True),
    'gridder': (StrictStr, 'standard'),
    'facets': (StrictInt, 1),
    'psfphasecenter': (StrOrInt, ''),
    'wprojplanes': (StrictInt, 1),
    'vptable': (StrictStr, ''),
    'mosweight': (StrictBool, True),
    'aterm': (StrictBool, True),
    'psterm': (StrictBool, False),
    'wbawp': (StrictBool, True),
    'conjbeams': (StrictBool, False),
    'cfcache': (StrictStr, ''),
    'usepointing': (StrictBool, False),
    'computepastep': (Float, 360.0),
    'rotatepastep': (Float, 360.0),
    'pointingoffsetsigdev': (list[float], []),
    'pblimit': (Float, 0.2),
    'normtype': (StrictStr, 'flatnoise'),
    'deconvolver': (StrictStr, 'hogbom'),
    'scales': (list[int], []),
    'nterms': (StrictInt, 2),
    'smallscalebias': (Float, 0.0),
    'fusedthreshold': (Float, 0.0),
    'largestscale': (StrictInt, -1),
    'restoration': (StrictBool, True),
    'restoringbeam': (StrOrList, []),
    'pbcor': (StrictBool, False),
    'outlierfile': (StrictStr, ''),
    'weighting': (StrictStr, 'natural'),
    'robust': (Float, 0.5),
    'noise': (StrictStr, '1.0Jy'),
    'npixels': (StrictInt, 0),
    'uvtaper': (StrOrList, ['']),
    'niter': (StrictInt, 0),
    'gain': (Float, 0.1),
    'threshold': (StrOrFloat, 0.0),
    'nsigma': (Float, 0.0),
    'cycleniter': (StrictInt, -1),
    'cyclefactor': (Float, 1.0),
    'minpsffraction': (Float, 0.05),
    'maxpsffraction': (Float, 0.8),
    'interactive': (StrictBool, False),
    'nmajor': (StrictInt, -1),
    'fullsummary': (StrictBool, False),
    'usemask': (StrictStr, 'user'),
    'mask': (StrOrList, ''),
    'pbmask': (Float, 0.0),
    'sidelobethreshold': (Float, 3.0),
    'noisethreshold': (Float, 5.0),
    'lownoisethreshold': (Float, 1.5),
    'negativethreshold': (Float, 0.0),
    'smoothfactor': (Float, 1.0),
    'minbeamfrac': (Float, 0.3),
    'cutthreshold': (Float, 0.01),
    'growiterations': (StrictInt, 75),
    'dogrowprune': (StrictBool, True),
    'minpercentchange': (Float, -1.0),
    'verbose': (StrictBool, False),
    'fastnoise': (StrictBool, True),
    'restart': (StrictBool, True),
    'savemodel': (StrictStr, 'none'),
    'calcres': (StrictBool, True),
    'calcpsf': (StrictBool, True),
    'psfcutoff': (Float, 0.35),
    'parallel': (StrictBool, False),
}

# Keywords whose value names a file or directory; relative values are taken from cube.toml's folder.
PATH_KEYWORDS = ("vis", "imagename", "mask", "startmodel", "vptable", "cfcache", "outlierfile")


class CubeSpecError(UserError):
    """A cube.toml that cannot be imaged; the message is one line, fit to print as it is."""


class _TcleanChecks(BaseModel):
    """Checks on [tclean] that tclean's own types do not express."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("vis", check_fields=False)
    @classmethod
    def _vis_given(cls, value):
        if not value:
            raise ValueError("vis must name a measurement set")
        return value

    @field_validator("imagename", check_fields=False)
    @classmethod
    def _imagename_given(cls, value):
        if not value:
            raise ValueError("imagename must name the output images")
        return shell_safety.path(value)  # the run directory and job log paths are made from it

    @field_validator("vis", check_fields=False)
    @classmethod
    def _vis_is_a_plain_path(cls, value):
        return [shell_safety.path(v) for v in value] if isinstance(value, list) else shell_safety.path(value)

    @model_validator(mode="after")
    def _parallel_safe(self):
        if self.interactive:
            raise ValueError("interactive=True cannot run on batch workers")
        if self.savemodel != "none":
            raise ValueError(
                "savemodel must be 'none': chunks imaged at once would write the measurement set together"
            )
        if self.parallel:
            raise ValueError("parallel=True is mpicasa's; hpc_imager parallelises the cube itself")
        if self.outlierfile:
            raise ValueError("outlierfile (multiple image fields) is not supported")
        if self.nchan == 0 or self.nchan < -1:
            raise ValueError("nchan must be -1 (all) or a positive number of channels")
        return self



TcleanParams = create_model(
    "TcleanParams",
    __base__=_TcleanChecks,
    __doc__="The [tclean] table: tclean's own keywords and values.",
    **{
        name: (kind, Field(default=default) if default is not ... else ...)
        for name, (kind, default) in TCLEAN_KEYWORDS.items()
    },
)


class ParallelParams(BaseModel):
    """The [parallel] table: how the cube is split and how much runs at once."""

    model_config = ConfigDict(extra="forbid", strict=True)

    channels_per_task: Annotated[Optional[int], Field(ge=1, description="Output channels imaged by one task (the last task may have fewer); default: chosen from the task's fixed cost (one read of the whole MS at the site's ms_read_rate included) and per-channel cost, the workers and a worker's memory (docs/benchmarks.md); with whole-cube iteration and auto-multithresh, a size whose chunks each lie in one of serial's automask blocks.")] = None
    workers: Annotated[Optional[int], Field(ge=1, description="Dask workers; default: the site's choice (local: one per core).")] = None
    max_in_flight: Annotated[Optional[int], Field(ge=1, description="Tasks submitted at once; default: twice the number of workers (one running, one waiting on each).")] = None
    retries: Annotated[int, Field(ge=0, description="Extra tries for a task that fails before the run gives up on its channels.")] = 2
    probe: Annotated[Union[Literal["auto"], bool], Field(description="Image one chunk on one worker first and size the workers for the rest from its measured peak memory; 'auto': when the site has no calibration for the cube's gridder and deconvolver and the measured figure could change the plan (a shared site's limits; a dedicated node's workers only if a need as far over the model's as it may fall short, 1.25 × for a task like those the memory matrix measured and 5 × else, would fit fewer).")] = "auto"
    iteration: Annotated[Optional[Literal["cube", "per-chunk"]], Field(description=(
        "With niter > 0: 'cube' keeps one iteration control for the whole cube in the driver, as serial"
        " tclean does, and equals serial tclean (the default); 'per-chunk' cleans each chunk as its own"
        " cube: faster (no barrier between cycles) but each chunk picks its own cycle thresholds and"
        " iteration budget, so planes differ from serial tclean."))] = None


class RunParams(BaseModel):
    """The [run] table: where the run's journal, logs, parts and report live."""

    model_config = ConfigDict(extra="forbid", strict=True)

    directory: Annotated[Optional[str], Field(description="Run directory; default: '<imagename>.hpcrun'. Relative to cube.toml.")] = None
    keep_parts: Annotated[bool, Field(description="Keep the per-chunk images after the final cubes are assembled.")] = False
    fits: Annotated[bool, Field(description="Also write the final image (and image.pbcor, when made) as FITS files, '<imagename>.image.fits', with CASA's exportfits once the cube is assembled; the CASA images stay.")] = False
    assembly: Annotated[Literal["auto", "placed", "virtual"], Field(description="How the final cube is assembled: 'placed' copies each part into the products while the chunks are imaged (one driver thread); 'virtual' makes each product CASA's virtual concatenation of the parts after the last chunk (nothing copied; the parts are kept in the run directory, which must stay where it is; not with restoringbeam='common'); 'auto' (default): the site's choice, else 'virtual' where the workers would produce product bytes faster than one thread places them (docs/benchmarks.md).")] = "auto"
    allow_blank_channels: Annotated[bool, Field(description="Image output channels that lie outside the selected data (tclean makes them blank planes) instead of refusing the cube.")] = False

    @field_validator("directory")
    @classmethod
    def _plain_path(cls, value):
        return value if value is None else shell_safety.path(value)  # job log directives are made from it


class CubeSpec(BaseModel):
    """A whole cube.toml."""

    model_config = ConfigDict(extra="forbid", strict=True)

    tclean: TcleanParams  # type: ignore[valid-type]
    parallel: ParallelParams = ParallelParams()
    run: RunParams = RunParams()

    @property
    def iteration(self) -> str:
        """How cleaning is controlled: 'none' (niter=0), 'cube' or 'per-chunk'."""
        if self.tclean.niter == 0:
            return "none"
        return self.parallel.iteration or "cube"

    @property
    def run_directory(self) -> Path:
        return Path(self.run.directory or f"{self.tclean.imagename}.hpcrun")

    def fingerprint(self) -> str:
        """Hash of everything that decides the pixels, so --resume can refuse a different cube."""
        decisive = {"tclean": self.tclean.model_dump(), "channels_per_task": self.parallel.channels_per_task}
        if self.iteration == "cube":
            decisive["iteration"] = "cube"  # per-chunk and niter=0 runs keep the fingerprints they had
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def _resolve_paths(table: dict, base: Path) -> dict:
    """Make file keywords absolute: workers run in their own scratch directories."""

    def resolve(key, value):
        if isinstance(value, list):
            return [resolve(key, v) for v in value]
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            return value
        candidate = base / value
        # mask and startmodel may also be region text or CASA expressions: only existing files move.
        if key in ("mask", "startmodel") and not candidate.exists():
            return value
        return str(candidate.resolve())

    return {key: resolve(key, value) if key in PATH_KEYWORDS else value for key, value in table.items()}


def _first_error(error: ValidationError) -> str:
    """The first problem as one line that names the keyword."""
    err = error.errors()[0]
    loc = [str(p) for p in err["loc"] if isinstance(p, str)]
    if err["type"] == "extra_forbidden":
        name, section = loc[-1], (loc[0] if len(loc) > 1 else None)
        choices = {"tclean": TCLEAN_KEYWORDS, "parallel": ParallelParams.model_fields, "run": RunParams.model_fields}
        close = difflib.get_close_matches(name, list(choices.get(section, CubeSpec.model_fields)), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"unknown keyword '{name}' in {f'[{section}]' if section else 'cube.toml'}{hint}"
    # Union members add their type names to the location; keep the keyword path only.
    path = ".".join(p for p in loc if not re.match(r"^(list\[|str|int|float|bool|function|literal)", p))
    if err["type"] == "missing":
        return f"{path}: required but not given"
    message = err["msg"].removeprefix("Value error, ")
    got = f", got {err['input']!r}" if err["type"].endswith(("_type", "literal_error")) else ""
    return f"{path}: {message}{got}" if path else message


def parse_cube_spec(data: dict, base: Path) -> CubeSpec:
    """Validate a cube.toml's contents; relative paths are taken from ``base``."""
    data = dict(data)
    if isinstance(data.get("tclean"), dict):
        data["tclean"] = _resolve_paths(data["tclean"], base)
    if isinstance(data.get("run"), dict) and data["run"].get("directory"):
        data["run"] = dict(data["run"], directory=str((base / data["run"]["directory"]).resolve()))
    try:
        return CubeSpec.model_validate(data)
    except ValidationError as error:
        raise CubeSpecError(_first_error(error)) from None


def load_cube_spec(path: Path, parallel_overrides: dict | None = None) -> CubeSpec:
    """Read and validate cube.toml, with [parallel] values from the command line over the file's;
    every problem is a one-line :class:`CubeSpecError`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CubeSpecError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as error:
        raise CubeSpecError(f"{path}: not valid TOML: {error}") from None
    if parallel_overrides:
        data["parallel"] = {**data.get("parallel", {}), **parallel_overrides}
    return parse_cube_spec(data, path.resolve().parent)
