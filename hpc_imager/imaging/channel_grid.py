"""The output channel grid of a cube, as serial tclean defines it, and its split into chunks.

tclean defines output channel ``i`` as ``start + i*width`` in the units the user wrote (data channel
indices, frequency or velocity) and fills in defaults and ``nchan=-1`` from the selected data. We
ask CASA's own imager for the resolved grid (``defineimage``/``getcsys``/``updatenchan``: no
gridding, no files), then give each chunk an explicit start/width/nchan in the user's units, so the
chunk's channels are exactly the serial ones:

* channel indices (int start): ``start + first*width`` stays an integer; tclean does the same sum.
* velocity strings: ``v0 + first*dv`` in the user's velocity unit. Optical velocities make a
  non-linear (tabular) frequency axis, so velocity arithmetic is the only exact way to split them.
* anything else (frequency strings, defaults): the resolved linear frequency axis, ``crval +
  first*cdelt`` in Hz.

One exception, measured on NGC5921: where output channels are not one data channel each (a width of
two data channels, or a start between two), tclean grids a cube of ``nchan=1`` given by frequency or
velocity differently from the same channel inside a longer cube (10-18 % of the plane peak apart),
while any chunk of two or more channels is identical. A one-channel chunk of such a grid is therefore
imaged with one guard channel after it, which the worker trims off. Where every output channel is one
data channel (``nchan=-1`` and the default start and width, or a start on a data channel with the
data's width) a one-channel cube is the cube's channel (all 63 NGC5921 channels bit-identical at 64²,
six of them at 256²), so no guard, and whole-cube iteration cleans one-channel chunks. Nor does a cube
of one channel get one: it is serial's own one-channel cube (with a guard, 10 % apart from it).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Literal

from ..inputs.cube_spec import TcleanParams

GridKind = Literal["channel", "velocity", "frequency"]
# tclean's keyword names that CASA's ImagerParameters spells differently (task_tclean.py does the same).
IMAGER_PARAMETER_NAMES = {"vis": "msname", "timerange": "timestr", "uvrange": "uvdist", "observation": "obs",
                          "intent": "state", "gain": "loopgain", "smallscalebias": "scalebias"}


@dataclass(frozen=True)
class Chunk:
    """One task's channels: output channels ``first`` .. ``first + nchan - 1`` of the cube."""

    index: int
    first: int
    nchan: int
    start: int | str
    width: int | str
    guard: int = 0  # extra channels imaged after the chunk and trimmed off (see the module docstring)

    @property
    def channels(self) -> range:
        return range(self.first, self.first + self.nchan)

    @property
    def name(self) -> str:
        return f"chunk-{self.index:05d}"

    def tclean_overrides(self) -> dict:
        return {"start": self.start, "width": self.width, "nchan": self.nchan + self.guard}


@dataclass(frozen=True)
class ChannelGrid:
    """The serial cube's spectral axis in the terms needed to split it."""

    nchan: int
    kind: GridKind
    start: float  # channel index, velocity (in ``unit``) or frequency (Hz) of output channel 0
    width: float  # the step between output channels, in the same terms
    unit: str  # '' for channel indices
    frame: str
    tabular_axis: dict | None = None  # serial's spectral coordinate when it is tabular (optical velocities)
    # Centre frequency (Hz, in ``frame``) of every output channel as CASA resolved it; preflight compares
    # them with the selected data's.
    frequencies: tuple[float, ...] = field(default=(), repr=False, compare=False)
    # Centre frequency (Hz, in ``frame``) of every selected data channel (preflight fills it in).
    data_frequencies: tuple[float, ...] = field(default=(), repr=False, compare=False)

    def channels_between_data_channels(self) -> list[int]:
        """Output channels that are not one data channel each (a centre off every data channel's, or
        a width other than the data's): tclean interpolates their data from neighbouring channels,
        and its major cycle predicts a data channel from the model planes on both sides of it."""
        if self.kind == "channel" or len(self.data_frequencies) < 2 or not self.frequencies:
            return []
        step = abs(self.data_frequencies[1] - self.data_frequencies[0])
        same_width = len(self.frequencies) < 2 or abs(abs(self.frequencies[1] - self.frequencies[0]) - step) <= 1e-6 * step
        return [i for i, f in enumerate(self.frequencies)
                if not same_width or abs(f - self.nearest_data_frequency(f)) > 1e-3 * step]

    def nearest_data_frequency(self, frequency: float) -> float:
        """The selected data channel's centre closest to ``frequency`` (a bisection: cubes have
        thousands of channels, and this runs before any worker starts)."""
        data = sorted(self.data_frequencies)
        i = bisect.bisect_left(data, frequency)
        return min(data[max(i - 1, 0):i + 1], key=lambda d: abs(d - frequency))

    @property
    def guards_single_channels(self) -> bool:
        """A one-channel chunk of this grid is imaged with a guard channel (see the module docstring):
        frequency or velocity channels not known to be one data channel each (preflight fills in the
        data's channels; without them, a guard)."""
        if self.kind == "channel":
            return False
        return len(self.data_frequencies) < 2 or bool(self.channels_between_data_channels())

    @property
    def linear(self) -> bool:
        return self.tabular_axis is None

    def caveats(self) -> list[str]:
        """Where a chunked cube is known not to be identical to serial tclean."""
        if not self.linear:
            return [
                "optical-velocity channels make a tabular frequency axis, and CASA's interpolation and "
                "primary beams on it depend on the whole axis: chunks differ slightly from serial tclean "
                "(measured on NGC5921: up to 0.5 % of the plane peak with linear interpolation, 1e-4 with "
                "nearest); use radio velocities or frequencies for an identical cube"
            ]
        return []

    def chunks(self, channels_per_task: int) -> list[Chunk]:
        """Split into chunks of ``channels_per_task`` (the last may be shorter)."""
        out = []
        guarded = self.nchan > 1 and self.guards_single_channels  # a one-channel cube is serial's own
        for index, first in enumerate(range(0, self.nchan, channels_per_task)):
            nchan = min(channels_per_task, self.nchan - first)
            guard = 1 if nchan == 1 and guarded else 0
            out.append(Chunk(index, first, nchan, self._start_of(first), self._width(), guard))
        return out

    def _start_of(self, first: int) -> int | str:
        if self.kind == "channel":
            return int(self.start) + first * int(self.width)
        return f"{self.start + first * self.width!r}{self.unit}"

    def _width(self) -> int | str:
        return int(self.width) if self.kind == "channel" else f"{self.width!r}{self.unit}"


def _quantity(value, like: str):
    """The casatools quantity of ``value`` if it has the dimensions of ``like``, else None."""
    from casatools import quanta

    qa = quanta()
    if not isinstance(value, str) or not value:
        return None
    try:
        q = qa.quantity(value)
    except Exception:
        return None
    return q if q["unit"] and qa.compare(q, qa.quantity(like)) else None


def spectral_axis(tclean: TcleanParams) -> tuple[dict, int]:
    """CASA's imager's spectral coordinate and channel count for these keywords (no data are gridded).

    CASA raises its own exceptions for keywords it cannot use (an image shape, a cell, a phase
    centre, a selection); :mod:`hpc_imager.inputs.preflight` turns them into one line naming the keyword.
    """
    from casatasks.private.imagerhelpers.input_parameters import ImagerParameters
    from casatools import synthesisimager

    params = {IMAGER_PARAMETER_NAMES.get(k, k): v for k, v in tclean.model_dump().items()}
    accepted = ImagerParameters.__init__.__code__.co_varnames[1:ImagerParameters.__init__.__code__.co_argcount]
    imager_params = ImagerParameters(**{k: v for k, v in params.items() if k in accepted})
    if not imager_params.checkParameters():
        raise ValueError("tclean parameters rejected by CASA (see the CASA log)")

    imager = synthesisimager()
    try:
        for selection in imager_params.getSelPars().values():
            imager.selectdata(selection)
        imager.defineimage(imager_params.getImagePars()["0"], imager_params.getGridPars()["0"])
        csys = imager.getcsys()
        nchan = imager.updatenchan() if tclean.nchan == -1 else tclean.nchan
    finally:
        imager.done()
    return next(v for k, v in csys["coordsys"].items() if k.startswith("spectral")), nchan


def channel_frequencies(spectral: dict, nchan: int) -> tuple[float, ...]:
    """Centre frequencies (Hz) of ``nchan`` channels of a CASA spectral coordinate record."""
    wcs = spectral.get("wcs")
    if wcs:
        return tuple(wcs["crval"] + (i - wcs["crpix"]) * wcs["cdelt"] for i in range(nchan))
    return tuple(float(f) for f in spectral["tabular"]["worldvalues"][:nchan])


def resolve_grid(tclean: TcleanParams) -> ChannelGrid:
    """Ask CASA for the serial cube's channel grid (cheap: no data are gridded)."""
    spectral, nchan = spectral_axis(tclean)
    frequencies = channel_frequencies(spectral, nchan)

    start, width = tclean.start, tclean.width
    if isinstance(start, int) and (isinstance(width, int) or width == ""):
        return ChannelGrid(nchan, "channel", start, width or 1, "", spectral["system"], frequencies=frequencies)
    v0, dv = _quantity(start, "1km/s"), _quantity(width, "1km/s")
    if v0 and dv:
        from casatools import quanta

        dv_in_start_unit = quanta().convert(dv, v0["unit"])["value"]
        return ChannelGrid(nchan, "velocity", v0["value"], dv_in_start_unit, v0["unit"], spectral["system"],
                           tabular_axis=None if spectral.get("wcs") else spectral, frequencies=frequencies)
    wcs = spectral.get("wcs")
    if not wcs:
        raise ValueError(
            "the cube's frequency axis is not linear (optical velocity?): give both start and width as velocities"
        )
    crval = wcs["crval"] - wcs["crpix"] * wcs["cdelt"]
    return ChannelGrid(nchan, "frequency", crval, wcs["cdelt"], "Hz", spectral["system"], frequencies=frequencies)
