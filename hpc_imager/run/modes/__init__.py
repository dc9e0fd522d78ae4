"""The imaging modes: how a cube's chunks become its products, one module each.

A mode says what its tasks are, what it journals, how ``status`` and report.png read that, what
goes into report.json and what ``hpc_imager.tclean`` returns, and how it resumes. The driver runs any
mode through :class:`ImagingMode`; a new mode is one module here and its tests.
"""

from __future__ import annotations

from .base import ImagingMode, ModeResult
from .cube_iteration import CubeIteration
from .whole_chunks import NiterZero, PerChunkCleaning

MODES: dict[str, type[ImagingMode]] = {mode.key: mode for mode in (NiterZero, CubeIteration, PerChunkCleaning)}


def mode_named(key: str | None) -> type[ImagingMode]:
    """The mode a run directory's run.json names (runs from before modes were named: niter 0)."""
    return MODES.get(key or NiterZero.key, NiterZero)


def mode_for(iteration: str) -> type[ImagingMode]:
    """The mode of a cube.toml (:attr:`CubeSpec.iteration`: 'none', 'cube' or 'per-chunk')."""
    return MODES[iteration]


__all__ = ["ImagingMode", "ModeResult", "MODES", "mode_named", "mode_for"]
