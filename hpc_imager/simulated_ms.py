"""Simulated measurement sets: larger cubes and mosaics than NGC5921 offers, from casadata alone.

NGC5921 has 63 channels and one field per source, so it can test neither a mosaic nor a long cube.
casatools' ``simulator`` observes a few point sources with the VLA D configuration that casadata
ships (``alma/simmos/vla.d.cfg``, geocentric XYZ: no site conversion needed) at L band, on one
pointing or a grid of them spaced by half the primary beam, and predicts their visibilities through
the primary beam of each pointing (so that a mosaic image is right, not only its memory).

Size: rows = 351 baselines × integrations × pointings; a row holds nchan × correlations complex
visibilities (8 B) plus flags. ``estimated_bytes`` gives the figure before anything is written;
:func:`make_simulated_ms` refuses more than ``max_bytes`` (default 2 GiB) so a mistyped channel
count cannot fill the disk.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from .imaging import casa_setup

VLA_D_CONFIG = Path("alma") / "simmos" / "vla.d.cfg"
DISH_DIAMETER_M = 25.0
BASELINES = 27 * 26 // 2
# Bytes per visibility on disk: DATA, MODEL_DATA and CORRECTED_DATA (8 each) + FLAG (1); measured 25.6.
BYTES_PER_VISIBILITY = 25.0
ROW_OVERHEAD_BYTES = 200
DEFAULT_MAX_BYTES = 2 * 2**30


class SimulationRefused(ValueError):
    """The requested MS would be larger than allowed."""


@dataclass(frozen=True)
class SimulatedObservation:
    """What to observe. Defaults: a 64-channel, one-pointing L-band cube of a few minutes."""

    nchan: int = 64
    pointings: int = 1  # 1, or n² for an n × n grid (4, 9, ...), or any n for a row of n
    integration_seconds: float = 30.0
    seconds_per_pointing: float = 300.0
    full_polarization: bool = False  # RR RL LR LL (for Stokes IQUV) instead of RR LL
    frequency_ghz: float = 1.4
    channel_width_khz: float = 100.0
    center: str = "J2000 12h00m00s +40d00m00s"
    noise_jy: float = 0.0

    @property
    def correlations(self) -> str:
        return "RR RL LR LL" if self.full_polarization else "RR LL"

    @property
    def primary_beam_arcmin(self) -> float:
        """FWHM ≈ 1.2 λ/D."""
        wavelength = 0.299792458 / self.frequency_ghz
        return math.degrees(1.2 * wavelength / DISH_DIAMETER_M) * 60

    @property
    def rows(self) -> int:
        integrations = max(1, round(self.seconds_per_pointing / self.integration_seconds))
        return BASELINES * integrations * self.pointings

    def estimated_bytes(self) -> int:
        per_row = self.nchan * len(self.correlations.split()) * BYTES_PER_VISIBILITY + ROW_OVERHEAD_BYTES
        return int(self.rows * per_row)

    def pointing_offsets_arcmin(self) -> list[tuple[float, float]]:
        """(east, north) offsets of each pointing: a square grid when ``pointings`` is a square, else a row."""
        step = self.primary_beam_arcmin / 2
        side = math.isqrt(self.pointings)
        if side * side == self.pointings:
            cells = [(i, j) for j in range(side) for i in range(side)]
            middle = (side - 1) / 2
            return [((i - middle) * step, (j - middle) * step) for i, j in cells]
        middle = (self.pointings - 1) / 2
        return [((i - middle) * step, 0.0) for i in range(self.pointings)]


def _read_config(path: Path) -> tuple[list[float], list[float], list[float], list[float], list[str]]:
    x, y, z, diam, names = [], [], [], [], []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        x.append(float(fields[0])), y.append(float(fields[1])), z.append(float(fields[2]))
        diam.append(float(fields[3])), names.append(fields[4])
    return x, y, z, diam, names


def _sources(obs: SimulatedObservation, cl_path: Path) -> None:
    """A few flat-spectrum point sources inside the mosaic: one polarised at the centre."""
    from casatools import componentlist, measures, quanta

    me, qa, cl = measures(), quanta(), componentlist()
    centre = me.direction(*obs.center.split())
    offsets = [(0.0, 0.0, [1.0, 0.05, 0.03, 0.01]), (4.0, 3.0, [0.5, 0, 0, 0]), (-6.0, -2.0, [0.3, 0, 0, 0])]
    offsets += [(dx + 2.0, dy - 3.0, [0.4, 0, 0, 0]) for dx, dy in obs.pointing_offsets_arcmin()[1:]]
    for east, north, flux in offsets:
        direction = me.shift(centre, offset=qa.quantity(math.hypot(east, north), "arcmin"),
                             pa=qa.quantity(math.degrees(math.atan2(east, north)), "deg"))
        cl.addcomponent(dir=direction, flux=flux, fluxunit="Jy", freq=f"{obs.frequency_ghz}GHz", shape="point",
                        polarization="Stokes")
    cl.rename(str(cl_path))
    cl.close()


def make_simulated_ms(vis: Path, obs: SimulatedObservation = SimulatedObservation(),
                      max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Simulate ``obs`` into ``vis`` unless it is already there (idempotent; written aside, then renamed)."""
    vis = Path(vis)
    if (vis / "table.dat").exists():
        return vis
    if obs.estimated_bytes() > max_bytes:
        raise SimulationRefused(f"a simulated MS of {obs.nchan} channels × {obs.rows} rows would take about "
                                f"{obs.estimated_bytes() / 2**30:.1f} GiB, over the {max_bytes / 2**30:.1f} GiB "
                                "allowed: fewer channels, pointings or integrations")
    casa_setup.configure_offline()
    from casatools import measures, quanta, simulator

    me, qa = measures(), quanta()
    partial = vis.with_name(vis.name + ".partial")
    components = vis.with_name(vis.name + ".partial.cl")
    for leftover in (partial, components):
        shutil.rmtree(leftover, ignore_errors=True)  # our own, from an interrupted simulation
    _sources(obs, components)

    x, y, z, diam, names = _read_config(casa_setup.casadata_path() / VLA_D_CONFIG)
    sm = simulator()
    sm.open(str(partial))
    sm.setconfig(telescopename="VLA", x=x, y=y, z=z, dishdiameter=diam, mount=["alt-az"], antname=names,
                 padname=names, coordsystem="global", referencelocation=me.observatory("VLA"))
    sm.setspwindow(spwname="LBAND", freq=f"{obs.frequency_ghz}GHz", deltafreq=f"{obs.channel_width_khz}kHz",
                   freqresolution=f"{obs.channel_width_khz}kHz", nchannels=obs.nchan, stokes=obs.correlations)
    sm.setfeed(mode="perfect R L")
    sm.setlimits(shadowlimit=0.001, elevationlimit="8deg")
    sm.setauto(autocorrwt=0.0)
    sm.settimes(integrationtime=f"{obs.integration_seconds}s", usehourangle=True,
                referencetime=me.epoch("utc", "2025/01/01/00:00:00"))
    centre = me.direction(*obs.center.split())
    elapsed = -obs.seconds_per_pointing * obs.pointings / 2  # around transit
    for index, (east, north) in enumerate(obs.pointing_offsets_arcmin()):
        name = f"P{index:02d}"
        direction = me.shift(centre, offset=qa.quantity(math.hypot(east, north), "arcmin"),
                             pa=qa.quantity(math.degrees(math.atan2(east, north)), "deg"))
        sm.setfield(sourcename=name, sourcedirection=direction)
        sm.observe(sourcename=name, spwname="LBAND", starttime=f"{elapsed}s",
                   stoptime=f"{elapsed + obs.seconds_per_pointing}s")
        elapsed += obs.seconds_per_pointing
    sm.setvp(dovp=True, usedefaultvp=True)  # each pointing sees the sources through its own primary beam
    sm.predict(complist=str(components))
    if obs.noise_jy:
        sm.setnoise(mode="simplenoise", simplenoise=f"{obs.noise_jy}Jy")
        sm.corrupt()
    sm.close()
    shutil.rmtree(components)
    partial.rename(vis)
    return vis
