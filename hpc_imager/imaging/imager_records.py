"""tclean's keywords as the records casatools' imager tools take, made in the driver for each chunk.

task_tclean turns its keywords into records (casatasks' ``ImagerParameters``) and hands them to
casatools' synthesisimager, synthesisnormalizer and synthesisdeconvolver. The driver, which has
casatasks loaded anyway (preflight, the channel grid), makes them for every chunk (0.3 ms each), so
a worker that images with the tools needs casatools alone. Importing casatasks (every CASA task,
scipy, matplotlib) took two workers 4.8 s at once on this 2-core machine against 0.7 s for
casatools, and made their exit 0.9 s longer (measured with a LocalCluster of 2 workers).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .channel_grid import IMAGER_PARAMETER_NAMES, Chunk

# The image name the records are made with; each attempt puts its own scratch path in its place.
_IMAGENAME = "@hpc_imager-chunk-images@"


@dataclass(frozen=True)
class ImagerRecords:
    """PySynthesisImager's records for one chunk (one image field), plain data that pickles."""

    selection: tuple[dict, ...]  # one per measurement set, in the order tclean selects them
    image: dict
    grid: dict
    normalization: dict
    weighting: dict
    deconvolution: dict
    iteration: dict
    restoration: bool
    pbcor: bool
    # briggsbwtaper over chunks: the driver's table of the whole cube's weights (cube_weights.py), and
    # the chunk's first channel in the cube
    cube_weights: str = ""
    first_channel: int = 0

    @property
    def usemask(self) -> str:
        return self.deconvolution["usemask"]

    def named(self, imagename: str, startmodel: bool = True) -> "ImagerRecords":
        """The same records for images called ``imagename`` (an attempt's scratch path); without
        ``startmodel`` after the first step, where serial's deconvolver has already added it to the model."""

        current = self.image["imagename"]  # _IMAGENAME until named

        def put(value):
            if isinstance(value, dict):
                return {k: put(v) for k, v in value.items()}
            if isinstance(value, str) and value.startswith(current):
                return imagename + value[len(current):]
            return value

        named = replace(self, selection=tuple(put(s) for s in self.selection), image=put(self.image),
                        grid=put(self.grid), normalization=put(self.normalization),
                        deconvolution=put(self.deconvolution), iteration=put(self.iteration))
        if not startmodel:
            named.image["startmodel"] = ""
            named.deconvolution["startmodel"] = ""
        return named


def imager_parameters(tclean_params: dict, imagename: str):
    """ImagerParameters exactly as task_tclean builds them from its keywords (needs casatasks)."""
    from casatasks.private.imagerhelpers.input_parameters import ImagerParameters

    given = {IMAGER_PARAMETER_NAMES.get(k, k): v for k, v in tclean_params.items()}
    given["imagename"] = imagename
    given["chanchunks"] = 1
    names = ImagerParameters.__init__.__code__.co_varnames[1:]
    defaults = dict(zip(names, ImagerParameters.__init__.__defaults__))
    bparm = {k: given.get(k, default) for k, default in defaults.items()}
    if bparm["mosweight"] and bparm["gridder"] not in ("mosaic", "awp2"):
        bparm["mosweight"] = False
    return ImagerParameters(**bparm)


def imager_records(tclean_params: dict, chunk: Chunk | None = None, cube_weights: str = "") -> ImagerRecords:
    """The records for ``chunk``'s channels of the cube (the whole cube without one); ``cube_weights``:
    the whole cube's imaging weights to hand the chunk (:mod:`cube_weights`)."""
    params = dict(tclean_params, **(chunk.tclean_overrides() if chunk else {}))
    made = imager_parameters(params, _IMAGENAME)
    selection = made.getSelPars()
    return ImagerRecords(
        selection=tuple(selection[ms] for ms in sorted(selection)),
        image=made.getImagePars()["0"],
        grid=made.getGridPars()["0"],
        normalization=made.getNormPars()["0"],
        weighting=made.getWeightPars(),
        deconvolution=made.getDecPars()["0"],
        iteration=made.getIterPars(),
        restoration=bool(params.get("restoration", True)),
        pbcor=bool(params.get("pbcor", False)),
        cube_weights=cube_weights,
        first_channel=chunk.first if chunk else 0,
    )
