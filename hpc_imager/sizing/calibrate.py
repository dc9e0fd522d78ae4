"""Calibrate a site's memory and time model on its own workers with real tclean tasks.

Samples come from test tasks run for the purpose (:func:`measure`) or from the chunks of finished
runs (:func:`samples_from_reports`: every report.json holds each chunk's measured peak). Each
sample is a real imaging task (the cube's own keywords, at a given image size and number of
channels), the task ``submit`` would run, on a worker started exactly as ``submit`` starts them;
its peak RSS and wall time are measured by the task itself. A least-squares line through the
samples gives the base and the bytes per pixel per channel (and seconds per megapixel-channel) for
the cube's gridder and deconvolver, which are then stored in the site's TOML as a
``[[calibration]]`` table.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tomlkit

from ..backends import backend_for
from ..errors import UserError
from ..imaging.channel_grid import resolve_grid
from ..imaging.imaging_task import whole_chunk_task
from ..imaging.worker_plugin import PrepareWorker
from ..inputs.cube_spec import CubeSpec
from ..inputs.site_profile import Calibration, SiteProfile
from ..logs import send_dask_logs_to
from .estimate import GIB, MEMORY_TERMS, cube_facts, estimate_task, image_pixels, stokes_planes
from .plan import make_plan


@dataclass(frozen=True)
class Sample:
    imsize: int
    channels: int
    pixel_channels: int
    peak_gib: float
    seconds: float


def _sample_spec(spec: CubeSpec, imsize: int, channels: int) -> CubeSpec:
    tclean = spec.tclean.model_copy(update={"imsize": [imsize, imsize]})
    parallel = spec.parallel.model_copy(update={"channels_per_task": channels, "workers": 1})
    return spec.model_copy(update={"tclean": tclean, "parallel": parallel})


def measure(spec: CubeSpec, site: SiteProfile, sizes: list[tuple[int, int]], work_dir: Path) -> list[Sample]:
    """Run one real task per (imsize, channels) on one worker of ``site``, restarted before each.

    A run's worker images tasks of one size, each peaking where the first did (NGC5921 512²×8, 4
    in a row: 0.289-0.291 GiB). A worker that imaged other sizes first does not: what CASA keeps
    from them moved a task's peak by up to 7 % (768²×4: 0.304 GiB in a fresh worker, twice;
    0.321-0.324 after other sizes), and that put the calibrated line 6 % under a 768²×4 task."""
    sizes = sorted(sizes, key=lambda s: s[0] * s[0] * s[1])
    largest = _sample_spec(spec, *sizes[-1])
    plan = make_plan(largest, site, estimate_task(largest, site, cube_facts(largest)), chunks=1)
    grid = resolve_grid(spec.tclean)
    samples = []
    (work_dir / "logs").mkdir(parents=True, exist_ok=True)
    send_dask_logs_to(open(work_dir / "logs" / "calibrate.dask.log", "a", buffering=1))  # the restarts' warnings
    with backend_for(site).cluster(plan, site, work_dir) as client:
        client.register_plugin(PrepareWorker(str(work_dir)))
        for attempt, (imsize, channels) in enumerate(sizes, start=1):
            if attempt > 1:
                client.restart()  # a fresh worker for every sample, as every run's worker starts
            chunk = grid.chunks(channels)[0]
            params = dict(spec.tclean.model_dump(), imsize=[imsize, imsize], imagename=str(work_dir / "sample"))
            task, inputs = whole_chunk_task(params)
            metrics = client.submit(task, inputs(chunk), chunk, str(work_dir), attempt, pure=False).result()
            shutil.rmtree(work_dir / "parts", ignore_errors=True)
            pixels = imsize * imsize * stokes_planes(spec.tclean.stokes)
            samples.append(Sample(imsize, chunk.nchan, pixels * chunk.nchan, metrics["peak_rss_bytes"] / GIB,
                                  metrics["wall_seconds"]))
    return samples


class NoSamples(UserError):
    """Nothing to fit a calibration on."""


def fit(samples: list[Sample], gridder: str, deconvolver: str) -> Calibration:
    """Least-squares lines: peak memory (lifted to cover every sample) and wall time against pixels × channels.

    Samples of one size only (the chunks of one run) cannot give a slope: the default model's
    per pixel-channel constant is kept and the base fitted, and wall time is taken as proportional.
    """
    if not samples:
        raise NoSamples("no finished tasks to fit a calibration on")
    x = np.array([s.pixel_channels for s in samples], dtype=float)
    peaks = np.array([s.peak_gib * GIB for s in samples])
    seconds = np.array([s.seconds for s in samples])
    if len(set(x)) >= 2:
        memory_slope, memory_base = np.polyfit(x, peaks, 1)
        time_slope, time_base = np.polyfit(x / 1e6, seconds, 1)
    else:
        memory_slope, memory_base = MEMORY_TERMS["image_cube"], 0.0
        time_slope, time_base = float(seconds.max() / (x[0] / 1e6)), 0.0
    # Lift the line onto the highest sample: a memory model may over-estimate a little, never under.
    memory_base += max(0.0, float((peaks - (memory_base + memory_slope * x)).max()))
    described = ", ".join(sorted({f"{s.imsize}²×{s.channels}" for s in samples}))
    return Calibration(
        gridder=gridder,
        deconvolver=deconvolver,
        base_gib=max(0.0, memory_base / GIB),
        bytes_per_pixel_channel=max(memory_slope, 1e-3),
        seconds_base=max(0.0, time_base),
        seconds_per_megapixel_channel=max(0.0, time_slope),
        fitted_on=f"{time.strftime('%Y-%m-%d')}: {described}",
    )


def samples_from_reports(paths: list[Path]) -> dict[tuple[str, str], list[Sample]]:
    """Every finished chunk of the runs whose report.json (or run directory) is given, by
    (gridder, deconvolver): a chunk's measured peak is a calibration sample like a test task's."""
    samples: dict[tuple[str, str], list[Sample]] = {}
    for path in paths:
        report_file = Path(path) / "report.json" if Path(path).is_dir() else Path(path)
        try:
            report = json.loads(report_file.read_text())
            cube = report["cube"]
            metrics = report["chunk_metrics"]
        except (OSError, ValueError, KeyError) as error:
            raise NoSamples(f"{report_file}: not a run report with chunk metrics ({error})") from None
        pixels = image_pixels(cube["imsize"]) * stokes_planes(cube["stokes"])
        side = int(image_pixels(cube["imsize"]) ** 0.5)
        for m in metrics:
            samples.setdefault((cube["gridder"], cube["deconvolver"]), []).append(
                Sample(side, m["channels"], pixels * m["channels"], m["peak_rss_bytes"] / GIB, m["wall_seconds"]))
    return samples


def prediction_errors(spec: CubeSpec, site: SiteProfile, samples: list[Sample]) -> list[float]:
    """(predicted - measured) / measured peak memory for each sample under ``site``'s model."""
    errors = []
    facts = cube_facts(spec)
    for s in samples:
        predicted = estimate_task(_sample_spec(spec, s.imsize, s.channels), site, facts).task_peak_gib
        errors.append((predicted - s.peak_gib) / s.peak_gib)
    return errors


def store(calibration: Calibration, site_file: Path) -> None:
    """Put ``calibration`` into the site TOML, replacing one for the same gridder and deconvolver."""
    document = tomlkit.parse(site_file.read_text())
    tables = document.get("calibration", tomlkit.aot())
    kept = tomlkit.aot()
    for table in tables:
        if (table["gridder"], table["deconvolver"]) != (calibration.gridder, calibration.deconvolver):
            kept.append(table)
    kept.append(tomlkit.item(calibration.model_dump()))
    document["calibration"] = kept
    site_file.write_text(tomlkit.dumps(document))


def default_sizes(spec: CubeSpec) -> list[tuple[int, int]]:
    """Three tasks around the cube's own size, small enough to be quick."""
    side = min(int(image_pixels(spec.tclean.imsize) ** 0.5), 2048)
    channels = spec.parallel.channels_per_task or 8  # the default's usual choice on 2 workers (chunk_size.py)
    return [(max(side // 4, 64), channels), (max(side // 2, 128), channels), (side, channels)]
