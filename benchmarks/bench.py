"""The benchmark: serial tclean, mpicasa, pclean 0.2.3 and hpc_imager side by side, in ONE run of this script.

    python benchmarks/bench.py [--out benchmarks/results] [--quick]

Every imaging run is a fresh Python process (so each pays its own imports and CASA start-up, as a
user would), one after the other, on the same machine, with the same tclean keywords:

- NGC5921 (63 channels) at 1024², briggs 0.5, niter 0 and niter 300: serial tclean, mpicasa (CASA's
  own parallel cube imaging: ``mpirun -n 3``, one client and 2 servers, ``tclean(parallel=True)``),
  pclean (2 workers, explicit nchan, cube_chunksize = ours), hpc_imager (2 workers);
- a simulated 512-channel cube at 128² (casatools' simulator, VLA D from casadata), niter 0, the same four;
- the machine's own limit: two serial tclean processes, each on one half of the channels, at once,
  against one on the whole cube (what 2 workers on 2 cores could at best reach);
- the channel sweep (``--only sweep``, benchmarks/channel_sweep.py): simulated cubes of 512 to 4096
  channels at 32² in two-channel tasks, the driver's cost and the assembly's tail against the size;
- the driver's own cost per task: 10 000 trivial tasks through the real driver loop (journal,
  progress bar, retries with 1 % injected failures) on 2 local workers;
- ``--only multicube``: NGC5921 cut into 2 and 4 spectral windows, each its own cube, submitted one
  after another against all in one submission (benchmarks/multicube.py);
- ``--only mosaic``: the wide mosaic of tests/test_mosaic.py (4 pointings, 24 × 1 MHz) at niter 0, 100
  and 100 with nmajor 1: serial tclean, mpicasa, pclean and hpc_imager's default, every product against
  serial's plane by plane, and the machine's limit (two halves at once) and serial on one thread.

Writes ``<out>/bench-<UTC time>.json`` and ``.png`` and prints a summary. Ratios are meaningful
only within one run: the machine may be shared, and the load average is recorded before and
after every measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BRIGGS = {"weighting": "briggs", "robust": 0.5}


# What distributed's nanny gives every worker process (distributed.nanny.pre-spawn-environ): one
# OpenMP thread. Serial tclean, run as users run it, uses CASA's OpenMP and FFTW threads on every core.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def _env(**extra: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    return env


def _timed_python(code: str, log: Path, **extra_env: str) -> float:
    """Run ``code`` in a fresh interpreter (CASA configured offline first); its wall time."""
    prelude = "from hpc_imager.imaging import casa_setup; casa_setup.configure_offline()\n"
    started = time.time()
    with open(log, "w") as out:
        result = subprocess.run([PYTHON, "-c", prelude + textwrap.dedent(code)], stdout=out, stderr=subprocess.STDOUT,
                                env=_env(**extra_env), cwd=log.parent)
    seconds = time.time() - started
    if result.returncode:
        raise RuntimeError(f"benchmark step failed (exit {result.returncode}); see {log}")
    return seconds


STOP = ("iterdone", "nmajordone", "stopcode")  # how a cleaning run stopped (tclean's return)


def tclean_stop(log: Path) -> dict:
    """The iterations, major cycles and stop code a serial or mpicasa run printed into its log."""
    import ast

    lines = [line for line in log.read_text().splitlines() if line.startswith("tclean_stop ")]
    return ast.literal_eval(lines[-1].split(" ", 1)[1]) if lines else {}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def by_frequency(params: dict) -> dict:
    """``params`` with the default channel grid written out as frequencies (start, width, nchan).

    pclean 0.2.3 gives each sub-cube of a cube whose ``start`` is a channel index (or the default)
    the start ``str(offset)``, which tclean does not read as a channel: every sub-cube images the
    first channels again (measured: NGC5921 in chunks of 8, planes 8-62 were copies of planes 0-7's
    neighbours, up to 4 × the plane peak from serial). With frequencies it splits the grid by
    arithmetic, and its cube equals serial's. Every tool gets the same keywords."""
    from hpc_imager.imaging.channel_grid import resolve_grid
    from hpc_imager.inputs.cube_spec import TcleanParams

    frequencies = resolve_grid(TcleanParams(**dict(params, imagename="grid"))).frequencies
    return dict(params, start=f"{frequencies[0]!r}Hz", width=f"{frequencies[1] - frequencies[0]!r}Hz",
                nchan=len(frequencies))


def serial_tclean(params: dict, work: Path, name: str, **extra_env: str) -> float:
    """Serial tclean with its own CASA log (``<name>.casa.log``: its per-step timings, as mpicasa's)."""
    return _timed_python(f"""
        from casatasks import casalog, tclean
        casalog.showconsole(False)
        casalog.setlogfile({str(work / f"{name}.casa.log")!r})
        returned = tclean(**{dict(params, imagename=str(work / name))!r}) or {{}}
        print("tclean_stop", {{k: int(returned[k]) for k in {STOP!r} if k in returned}})
        """, work / f"{name}.log", **extra_env)


def two_halves_at_once(params: dict, nchan: int, work: Path, name: str) -> float:
    """Two serial tclean processes, channels [0, nchan/2) and [nchan/2, nchan), started together, each
    with one OpenMP thread as a dask worker has: the best two workers on this machine could do.
    (With CASA's default threads each, two processes oversubscribe the cores: measured on a quiet
    machine, 1.82 × one serial tclean on the whole 512-channel cube.)"""
    half = nchan // 2
    prelude = "from hpc_imager.imaging import casa_setup; casa_setup.configure_offline()\n"
    started = time.time()
    procs = []
    for i, (start, count) in enumerate([(0, half), (half, nchan - half)]):
        code = prelude + textwrap.dedent(f"""
            from casatasks import casalog, tclean
            casalog.showconsole(False)
            tclean(**{dict(params, imagename=str(work / f'{name}-{i}'), start=start, nchan=count, width=1)!r})
            """)
        procs.append(subprocess.Popen([PYTHON, "-c", code], stdout=open(work / f"{name}-{i}.log", "w"),
                                      stderr=subprocess.STDOUT, env=_env(**ONE_THREAD), cwd=work))
    if any(p.wait() for p in procs):
        raise RuntimeError(f"a half-cube tclean failed; see {work}/{name}-*.log")
    return time.time() - started


# mpicasa as root (this machine's CI runs as root): Open MPI refuses to start without these.
MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def mpicasa_run(params: dict, work: Path, name: str) -> dict:
    """CASA's own parallel cube imaging, as its documentation runs it: ``mpirun -n 3`` (rank 0 the
    client, ranks 1-2 the servers) and ``tclean(parallel=True)``. For a cube, task_tclean turns
    ``parallel`` into its C++ parallel mode whenever casampi finds MPI: every server runs the
    major cycles (CubeMajorCycleAlgorithm) and minor cycles (CubeMinorCycleAlgorithm) of blocks of
    channels, and the client only hands them out and runs the iteration control, so 2 servers are
    the 2 imaging processes the other tools have (the client mostly waits). ``--oversubscribe``: 3
    ranks on 2 cores. Each run has its own CASA log (all ranks write to it, the servers' lines
    tagged ``MPIServer-<rank>``): its per-step timings are where mpicasa's time goes. Returns the wall time (mpirun's, what
    a user pays: start-up of 3 CASA processes and their shut-down included) and tclean's own."""
    logdir = work / f"{name}-casa"
    code = textwrap.dedent(f"""
        import time
        from pathlib import Path
        from hpc_imager.imaging import casa_setup
        casa_setup.configure_offline(Path({str(logdir)!r}))
        from casatasks import casalog, tclean  # on ranks 1-2 this import serves until the client ends
        casalog.showconsole(False)
        started = time.time()
        returned = tclean(**{dict(params, imagename=str(work / name), parallel=True)!r}) or {{}}
        print("tclean_seconds", time.time() - started)
        print("tclean_stop", {{k: int(returned[k]) for k in {STOP!r} if k in returned}})
        """)
    env = _env(**(MPI_AS_ROOT if os.geteuid() == 0 else {}))
    started = time.time()
    with open(work / f"{name}.log", "w") as out:
        result = subprocess.run(["mpirun", "-n", "3", "--oversubscribe", PYTHON, "-c", code], stdout=out,
                                stderr=subprocess.STDOUT, env=env, cwd=work)
    seconds = time.time() - started
    if result.returncode:
        raise RuntimeError(f"mpicasa failed (exit {result.returncode}); see {work / name}.log")
    inner = [line.split()[1] for line in (work / f"{name}.log").read_text().splitlines()
             if line.startswith("tclean_seconds ")]
    return {"seconds": round(seconds, 2), "tclean_seconds": round(float(inner[0]), 2) if inner else None}


def pclean_run(params: dict, nchan: int, chunk: int | None, work: Path, name: str) -> float:
    keywords = dict(params, imagename=str(work / name), nchan=nchan, parallel=True, nworkers=2,
                    cube_chunksize=chunk or -1)  # -1: pclean's default, one sub-cube per worker
    return _timed_python(f"""
        from casatasks import casalog
        casalog.showconsole(False)
        from pclean import pclean
        pclean(**{keywords!r})
        """, work / f"{name}.log")


def hpc_imager_run(params: dict, chunk: int | None, work: Path, name: str,
                   iteration: str | None = None) -> tuple[float, dict]:
    import tomlkit

    cube = tomlkit.document()
    cube["tclean"] = dict(params, imagename=str(work / name))
    cube["parallel"] = ({"workers": 2} | ({"channels_per_task": chunk} if chunk else {})  # None: our default
                        | ({"iteration": iteration} if iteration else {}))
    toml = work / f"{name}.toml"
    toml.write_text(tomlkit.dumps(cube))
    seconds = _timed_python(f"""
        import sys
        from hpc_imager.cli import main
        sys.argv = ["hpc_imager", "submit", "--site", "local", {str(toml)!r}]
        main()
        """, work / f"{name}.log")
    report = json.loads((work / f"{name}.hpcrun" / "report.json").read_text())
    return seconds, report


def _task_breakdown(report: dict) -> dict:
    """Worker time per tclean step, summed over the chunks, and the tail after the last chunk."""
    steps: dict[str, float] = {}
    for metrics in report["chunk_metrics"]:
        for step, seconds in metrics.get("tclean_steps", {}).items():
            steps[step] = round(steps.get(step, 0.0) + seconds, 2)
    concat = report.get("concat", {})
    return {
        "task_seconds_sum": round(sum(m["wall_seconds"] for m in report["chunk_metrics"]), 2),
        "tclean_steps_sum": steps,
        "imaging_seconds": round(report["imaging_seconds"], 2),
        "concat_tail_seconds": round(concat.get("concat_seconds", 0.0), 2),
        "placing_seconds": round(concat.get("placing_seconds", 0.0), 2),
        "placing_cpu_seconds": round(concat.get("placing_cpu_seconds", 0.0), 2),
        "concat_tail_fraction": round(concat.get("concat_seconds", 0.0) / report["imaging_seconds"], 4),
        "chunks": report["chunks"],
        "channels_per_task": report["channels_per_task"],
        # whole-cube iteration: per step its wall time, longest task and summed task time (the barrier)
        "iteration_steps": (report.get("iteration_summary") or {}).get("steps", []),
    }


def difference_from_serial(serial: Path, other: Path) -> dict:
    """How far another tool's .image is from serial tclean's: its channel count and the largest
    difference as a fraction of each plane's peak. A fast run that made a different cube is no win
    (pclean's 0.36 of serial, below the machine's limit, was measured before this check existed)."""
    import numpy as np
    from casatools import image

    def pixels(path: Path):
        ia = image()
        ia.open(str(path))
        try:
            return ia.getchunk()
        finally:
            ia.done()

    if not other.is_dir():
        return {"made": False}
    want, got = pixels(serial), pixels(other)
    if want.shape != got.shape:
        return {"made": True, "shape": list(got.shape), "serial_shape": list(want.shape)}
    planes = want.shape[-1]
    differences = [float(np.abs(got[..., c] - want[..., c]).max() / max(np.abs(want[..., c]).max(), 1e-30))
                   for c in range(planes)]
    return {"made": True, "nchan": planes, "max_plane_difference": max(differences),
            "planes_over_1e-5": [c for c, d in enumerate(differences) if d > 1e-5]}


def products_against_serial(serial: str, other: str, products=("image", "residual", "model", "psf", "pb")) -> dict:
    """Each product's largest difference from serial's as a fraction of each plane's peak, and the
    planes over 1e-5 (a mosaic's products differ unequally: its pb and psf on the planes with other
    beams, its image wherever cleaning saw them)."""
    import numpy as np
    from casatools import image

    def pixels(path: str):
        ia = image()
        ia.open(path)
        try:
            return ia.getchunk()
        finally:
            ia.done()

    compared = {}
    for product in products:
        want, got = pixels(f"{serial}.{product}"), pixels(f"{other}.{product}")
        per_plane = [float(np.abs(got[..., c] - want[..., c]).max() / max(np.abs(want[..., c]).max(), 1e-30))
                     for c in range(want.shape[-1])]
        compared[product] = {"max": round(max(per_plane), 6), "planes_over_1e-5": [c for c, d in enumerate(per_plane)
                                                                                   if d > 1e-5]}
    return compared


WIDE_MOSAIC = {"gridder": "mosaic", "imsize": [96, 96], "cell": ["30arcsec"], "specmode": "cube",
               "phasecenter": "J2000 12h00m00s +40d00m00s", "datacolumn": "data"}  # as tests/test_mosaic.py


# niter 0, niter 100 (4 major cycles, 72 s of serial tclean), and niter 100 stopped after one clean
# cycle by nmajor (42 s): tests/test_mosaic.py takes the first and the last
MOSAIC_CLEANING = ({"niter": 0}, {"niter": 100}, {"niter": 100, "nmajor": 1})
MOSAIC_CHANNELS = 24


def mosaic_comparison(vis: Path, cleaning: dict, work: Path) -> dict:
    """The wide mosaic (issue 19: 4 pointings, 24 × 1 MHz): serial tclean, mpicasa with 2 servers,
    pclean 0.2.3 and hpc_imager's default, every product of each against serial's, plane by plane;
    then the machine's limit (two halves at once) and serial on one thread. No chunking short of the
    whole cube gives every plane serial's primary beams (docs/correctness.md), mpicasa's included."""
    label = "mosaic24-" + "-".join(f"{k}{v}" for k, v in cleaning.items())
    params = dict(WIDE_MOSAIC, vis=str(vis), **cleaning)
    entry: dict = {"cube": label, "load_before": _load()}
    entry["serial_seconds"] = round(serial_tclean(params, work, f"{label}-serial"), 2)
    entry["mpicasa_seconds"] = mpicasa_run(params, work, f"{label}-mpicasa")["seconds"]
    # the same grid written as frequencies: pclean re-images the first channels in every sub-cube of
    # a default grid (by_frequency)
    entry["pclean_seconds"] = round(pclean_run(by_frequency(params), MOSAIC_CHANNELS, None, work,
                                               f"{label}-pclean"), 2)
    seconds, report = hpc_imager_run(params, None, work, f"{label}-hpc")
    entry["hpc_imager_seconds"], entry["hpc_imager_channels_per_task"] = round(seconds, 2), report["channels_per_task"]
    entry["hpc_imager_probe"] = bool(report.get("probe"))
    entry["hpc_imager_predicted_planes_off"] = report["mosaic_beams"]["planes_off_serial"]
    entry["two_halves_at_once_seconds"] = round(two_halves_at_once(params, MOSAIC_CHANNELS, work, f"{label}-halves"), 2)
    entry["serial_one_thread_seconds"] = round(serial_tclean(params, work, f"{label}-serial-1thread", **ONE_THREAD), 2)
    entry["load_after"] = _load()
    for tool in ("mpicasa", "pclean", "hpc_imager", "two_halves_at_once", "serial_one_thread"):
        entry[f"ratio_{tool}_over_serial"] = round(entry[f"{tool}_seconds"] / entry["serial_seconds"], 3)
    if cleaning["niter"]:
        entry["stop"] = {"serial": tclean_stop(work / f"{label}-serial.log"),
                         "mpicasa": tclean_stop(work / f"{label}-mpicasa.log"),
                         "hpc_imager": {k: report["tclean_return"].get(k) for k in STOP}}
    serial = str(work / f"{label}-serial")
    entry["mpicasa_vs_serial"] = products_against_serial(serial, str(work / f"{label}-mpicasa"))
    entry["pclean_vs_serial"] = products_against_serial(serial, str(work / f"{label}-pclean"))
    entry["hpc_imager_vs_serial"] = products_against_serial(serial, str(work / f"{label}-hpc"))
    print(json.dumps(entry), flush=True)
    return entry


def driver_overhead(tasks: int, work: Path) -> dict:
    seconds = _timed_python(f"""
        import json
        from benchmarks.driver_overhead import measure
        print(json.dumps(measure({tasks}, {str(work / 'overhead')!r})))
        """, work / "overhead.log")
    result = json.loads((work / "overhead.log").read_text().strip().splitlines()[-1])
    return dict(result, process_seconds=round(seconds, 2))


def hpc_imager_submit(tomls: list[Path], log: Path) -> float:
    """One ``hpc_imager submit --site local`` process for ``tomls``; its wall time."""
    return _timed_python(f"""
        import sys
        from hpc_imager.cli import main
        sys.argv = ["hpc_imager", "submit", "--site", "local", *{[str(t) for t in tomls]!r}]
        main()
        """, log)


def cube_comparison(label: str, params: dict, nchan: int, chunk: int | None, work: Path, limit: bool,
                    repeat_serial: bool = True) -> dict:
    # the 1-minute load average after each tool's run: on a shared machine, which figures it touched
    entry: dict = {"cube": label, "nchan": nchan, "channels_per_task": chunk, "load_before": _load(),
                   "load_after_each": {}}
    entry["serial_seconds"] = round(serial_tclean(params, work, f"{label}-serial"), 2)
    entry["load_after_each"]["serial"] = _load()
    mpicasa = mpicasa_run(params, work, f"{label}-mpicasa")
    entry["mpicasa_seconds"], entry["mpicasa_tclean_seconds"] = mpicasa["seconds"], mpicasa["tclean_seconds"]
    entry["load_after_each"]["mpicasa"] = _load()
    entry["pclean_seconds"] = round(pclean_run(params, nchan, chunk, work, f"{label}-pclean"), 2)
    entry["load_after_each"]["pclean"] = _load()
    seconds, report = hpc_imager_run(params, chunk, work, f"{label}-hpc")
    entry["hpc_imager_seconds"] = round(seconds, 2)
    entry["load_after_each"]["hpc_imager"] = _load()
    entry["hpc_imager"] = _task_breakdown(report)
    if params.get("niter", 0) > 0:  # the default is whole-cube iteration; independent chunks for comparison
        seconds, report = hpc_imager_run(params, chunk, work, f"{label}-hpc-per-chunk", iteration="per-chunk")
        entry["hpc_imager_per_chunk_seconds"] = round(seconds, 2)
        entry["load_after_each"]["hpc_imager_per_chunk"] = _load()
        entry["hpc_imager_per_chunk"] = _task_breakdown(report)
    serial_image = work / f"{label}-serial.image"
    entry["mpicasa_vs_serial"] = difference_from_serial(serial_image, work / f"{label}-mpicasa.image")
    entry["pclean_vs_serial"] = difference_from_serial(serial_image, work / f"{label}-pclean.image")
    entry["hpc_imager_vs_serial"] = difference_from_serial(serial_image, work / f"{label}-hpc.image")
    if "hpc_imager_per_chunk_seconds" in entry:
        entry["hpc_imager_per_chunk_vs_serial"] = difference_from_serial(serial_image,
                                                                         work / f"{label}-hpc-per-chunk.image")
    if limit:
        entry["two_halves_at_once_seconds"] = round(two_halves_at_once(params, nchan, work, f"{label}-halves"), 2)
        entry["load_after_each"]["two_halves"] = _load()
    # how much CASA's own threads give serial tclean: the part of the cores a single process already uses
    entry["serial_one_thread_seconds"] = round(serial_tclean(params, work, f"{label}-serial-1thread", **ONE_THREAD), 2)
    entry["load_after_each"]["serial_one_thread"] = _load()
    if repeat_serial:  # serial again after the others: how much the machine's load drifted meanwhile
        entry["serial_again_seconds"] = round(serial_tclean(params, work, f"{label}-serial2"), 2)
        entry["load_after_each"]["serial_again"] = _load()
    entry["load_after"] = _load()
    serial = (entry["serial_seconds"] + entry.get("serial_again_seconds", entry["serial_seconds"])) / 2
    entry["ratio_hpc_imager_over_serial"] = round(entry["hpc_imager_seconds"] / serial, 3)
    entry["ratio_pclean_over_serial"] = round(entry["pclean_seconds"] / serial, 3)
    entry["ratio_mpicasa_over_serial"] = round(entry["mpicasa_seconds"] / serial, 3)
    if "hpc_imager_per_chunk_seconds" in entry:
        entry["ratio_per_chunk_over_serial"] = round(entry["hpc_imager_per_chunk_seconds"] / serial, 3)
    entry["ratio_serial_one_thread_over_serial"] = round(entry["serial_one_thread_seconds"] / serial, 3)
    if limit:
        entry["machine_limit_ratio"] = round(entry["two_halves_at_once_seconds"] / serial, 3)
        entry["hpc_imager_over_machine_limit"] = round(entry["hpc_imager_seconds"] / entry["two_halves_at_once_seconds"], 3)
    print(json.dumps(entry), flush=True)
    return entry


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cubes = results["cubes"]
    fig, (bars, tails) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1.2]})
    kinds = [("serial_seconds", "serial tclean", None),
             ("serial_one_thread_seconds", "serial, one thread", None),
             ("two_halves_at_once_seconds", "2 halves at once (limit)", None),
             ("mpicasa_seconds", "mpicasa (2 servers)", "mpicasa_vs_serial"),
             ("pclean_seconds", "pclean 0.2.3", "pclean_vs_serial"),
             ("hpc_imager_seconds", "hpc_imager (default)", "hpc_imager_vs_serial"),
             ("hpc_imager_per_chunk_seconds", "hpc_imager per-chunk", "hpc_imager_per_chunk_vs_serial")]
    kinds = [k for k in kinds if any(k[0] in c for c in cubes)]
    width = 0.8 / len(kinds)
    for k, (key, label, check) in enumerate(kinds):
        values = [c.get(key, math.nan) for c in cubes]
        xs = [i + (k - (len(kinds) - 1) / 2) * width for i in range(len(cubes))]
        bars.bar(xs, values, width, label=label)
        for x, v, c in zip(xs, values, cubes):
            if not math.isnan(v):
                serial = (c["serial_seconds"] + c.get("serial_again_seconds", c["serial_seconds"])) / 2
                differs = check and c.get(check, {}).get("planes_over_1e-5")
                bars.text(x, v, f"{v / serial:.2f}" + ("\n≠" if differs else ""), ha="center", va="bottom", fontsize=7)
    bars.set_ylabel("wall seconds (label: / serial, mean of its runs; ≠: cube differs from serial's)", fontsize=8)
    bars.set_xticks(range(len(cubes)), [c["cube"] for c in cubes], fontsize=8)
    bars.legend(fontsize=8)
    bars.set_title(f"one run, {results['started_utc']} UTC, load {cubes[0]['load_before']}–{cubes[-1]['load_after']}",
                   fontsize=9)
    tails.bar([c["cube"] for c in cubes], [100 * c["hpc_imager"]["concat_tail_fraction"] for c in cubes])
    tails.axhline(5, color="tab:red", ls="--", label="target 5 %")
    overhead = results.get("driver_overhead", {})
    tails.set_title(f"concat tail (% of imaging); driver {overhead.get('ms_per_task', float('nan')):.1f} ms/task",
                    fontsize=9)
    tails.tick_params(axis="x", labelsize=7, rotation=20)
    tails.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="Small sizes: checks the script, measures nothing.")
    parser.add_argument("--channels-per-task", type=int, default=8)
    parser.add_argument("--only", default="overhead,sim,ngc300,ngc0,sweep", help="Comma-separated parts, run in this order (also: multicube, mosaic).")
    parser.add_argument("--imsize", type=int, default=None, help="NGC5921 image side (default 1024).")
    parser.add_argument("--no-repeat", action="store_true", help="Do not run serial tclean again after the others.")
    parser.add_argument("--tasks", type=int, default=None, help="Trivial tasks for the driver overhead (default 10000).")
    parser.add_argument("--replot", type=Path, help="Draw the PNG of an earlier run's JSON again, measure nothing.")
    parser.add_argument("--keep-work", action="store_true",
                        help="Keep the work directory (the MSs, every tool's cubes and run directories: "
                             "about 20 GB at the full sizes; two kept runs filled this machine's /tmp).")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads(args.replot.read_text()), args.replot.with_suffix(".png"))
        return
    sys.path.insert(0, str(REPO))
    from hpc_imager.imaging import casa_setup

    casa_setup.configure_offline()
    from hpc_imager.demo import make_ngc5921_ms
    from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms

    work = Path(tempfile.mkdtemp(prefix="hpc_imager-bench-"))
    imsize, sim_nchan, sim_imsize, tasks = (256, 64, 64, 300) if args.quick else (1024, 512, 128, 10_000)
    imsize, tasks = args.imsize or imsize, args.tasks or tasks
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    results: dict = {"started_utc": started, "work": str(work), "cpu_count": os.cpu_count(), "quick": args.quick,
                     "cubes": []}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"bench-{started.replace(' ', 'T').replace(':', '')}{'-quick' if args.quick else ''}"
    ngc = by_frequency({"vis": str(make_ngc5921_ms(work / "ngc5921.ms")), "field": "2", "specmode": "cube",
                        "nchan": -1, "imsize": [imsize, imsize], "cell": ["15arcsec"], **BRIGGS})
    for part in args.only.split(","):
        if part == "overhead":
            results["driver_overhead"] = driver_overhead(tasks, work)
            print(json.dumps(results["driver_overhead"]), flush=True)
        elif part in ("ngc0", "ngc300"):
            niter = int(part[3:])
            results["cubes"].append(cube_comparison(f"ngc5921-{imsize}-niter{niter}", dict(ngc, niter=niter), 63,
                                                    args.channels_per_task, work, limit=True,
                                                    repeat_serial=not args.no_repeat))
        elif part == "multicube":
            from benchmarks.multicube import compare

            base = {"vis": ngc["vis"], "field": "2", "specmode": "cube", "imsize": [imsize, imsize],
                    "cell": ["15arcsec"], "niter": 0, **BRIGGS}
            for n in (2, 4):
                entry = compare(base, n, args.channels_per_task, work, hpc_imager_submit)
                results.setdefault("multicube", []).append(entry)
                print(json.dumps(entry), flush=True)
        elif part == "sim":
            sim_ms = make_simulated_ms(work / "sim.ms", SimulatedObservation(nchan=sim_nchan))
            sim = by_frequency({"vis": str(sim_ms), "specmode": "cube", "nchan": -1,
                                "imsize": [sim_imsize, sim_imsize], "cell": ["10arcsec"], "niter": 0, **BRIGGS})
            results["cubes"].append(cube_comparison(f"sim{sim_nchan}-{sim_imsize}-niter0", sim, sim_nchan,
                                                    None, work, limit=True,  # each tool's default chunking
                                                    repeat_serial=not args.no_repeat))
        elif part == "mosaic":  # MOSAIC_CLEANING
            wide = make_simulated_ms(work / "wide.ms", SimulatedObservation(
                nchan=MOSAIC_CHANNELS, channel_width_khz=1000, pointings=4, integration_seconds=60,
                seconds_per_pointing=120))
            for cleaning in MOSAIC_CLEANING:
                results.setdefault("mosaic", []).append(mosaic_comparison(wide, cleaning, work))
        elif part == "sweep":  # the channel sweep (benchmarks/channel_sweep.py): 500 to 4000+ channels
            from benchmarks.channel_sweep import sweep

            sizes = [64, 128] if args.quick else [512, 1024, 2048, 4096]
            results["channel_sweep"] = sweep(sizes, 2, 32, work)
        results["finished_utc"] = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
        stem.with_suffix(".json").write_text(json.dumps(results, indent=2))  # after every part: a killed run keeps them
        if results["cubes"]:
            plot(results, stem.with_suffix(".png"))
    if args.keep_work:
        print(f"wrote {stem}.json and .png; work directory kept: {work}")
    else:
        shutil.rmtree(work)
        print(f"wrote {stem}.json and .png; removed the work directory {work} (--keep-work keeps it)")


if __name__ == "__main__":
    main()
