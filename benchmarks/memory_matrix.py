"""Peak memory of one imaging task over a matrix of tclean settings, against hpc_imager's estimate.

Each row runs in a FRESH process that imports what a dask worker imports and then calls
``hpc_imager.imaging_task.image_chunk`` itself (clear_refs, tclean, VmHWM), so the figure is the one
a worker reports. The matrix varies one factor at a time around a few base points (NGC5921 and
simulated VLA D-configuration cubes and mosaics from ``hpc_imager.simulated_ms``), plus a few
combinations; results go to ``benchmarks/results/memory_matrix.json`` (rows already there are
skipped: the script resumes).

Safety on a shared machine: a row whose estimate (the model in hpc_imager/estimate.py) is over
``--max-gib`` (default 9) is skipped, a watchdog kills a row whose resident memory passes it
anyway, a row waits while the machine has less free memory than its estimate plus 2 GiB, and a
row whose products would take more than ``--max-disk-gib`` is refused before it starts.

    python benchmarks/memory_matrix.py run [--work DIR]      # measure (resumable)
    python benchmarks/memory_matrix.py report                 # estimate/measured, leave-one-out
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_imager import casa_setup  # noqa: E402
from hpc_imager.estimate import GIB, TaskShape, task_peak_bytes  # noqa: E402
from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory_matrix.json"
BYTES_PER_PRODUCT_PIXEL = 4 * 9  # image, residual, model, psf, pb, sumwt, weight, mask, pbcor at float32

# Data sets: NGC5921 (VLA D, 63 channels, RR LL) and simulated VLA D cubes (hpc_imager.simulated_ms).
DATASETS = {
    "ngc5921": None,
    "sim-p1": SimulatedObservation(nchan=64, pointings=1, integration_seconds=30, seconds_per_pointing=300),
    "sim-p1-pol": SimulatedObservation(nchan=16, pointings=1, integration_seconds=30, seconds_per_pointing=300,
                                       full_polarization=True),
    "sim-p4": SimulatedObservation(nchan=16, pointings=4, integration_seconds=30, seconds_per_pointing=300),
    "sim-p9": SimulatedObservation(nchan=16, pointings=9, integration_seconds=30, seconds_per_pointing=300),
}
NGC = {"data": "ngc5921", "field": "2", "cell": "15arcsec"}
SIM = {"cell": "12arcsec", "phasecenter": "J2000 12h00m00s +40d00m00s"}


def _row(name: str, **settings) -> dict:
    row = {"data": "ngc5921", "field": "", "cell": "15arcsec", "phasecenter": "", "imsize": 1024, "nchan": 4,
           "gridder": "standard", "wprojplanes": 1, "facets": 1, "deconvolver": "hogbom", "scales": [],
           "usemask": "user", "pbmask": 0.0, "weighting": "natural", "niter": 0, "stokes": "I",
           "savemodel": "none"}
    row.update(NGC)
    if settings.get("data", "ngc5921") != "ngc5921":
        row.update(SIM, field="")
    row.update(settings)
    row["name"] = name
    return row


def design() -> list[dict]:
    """One factor at a time around base points, plus combinations used to validate the model."""
    rows = []
    # Size and channels (standard, hogbom, niter 0): the per pixel-channel term and the base.
    for imsize in (256, 512, 1024, 2048, 4096):
        rows.append(_row(f"std-{imsize}-4", imsize=imsize))
    for nchan in (1, 16, 63):
        rows.append(_row(f"std-1024-{nchan}", nchan=nchan))
    rows += [_row("std-4096-1", imsize=4096, nchan=1), _row("std-8192-1", imsize=8192, nchan=1),
             _row("std-2048-16", imsize=2048, nchan=16), _row("sim-std-512-64", data="sim-p1", imsize=512, nchan=64)]
    # Weighting: the weight-density grid (per channel with perchanweightdensity).
    for weighting in ("briggs", "briggsbwtaper", "uniform"):
        rows.append(_row(f"{weighting}-1024-4", weighting=weighting))
        rows.append(_row(f"{weighting}-2048-16", weighting=weighting, imsize=2048, nchan=16))
    # Stokes planes.
    rows += [_row("sim-I-1024-4", data="sim-p1-pol", imsize=1024),
             _row("sim-IQUV-1024-4", data="sim-p1-pol", imsize=1024, stokes="IQUV"),
             _row("sim-IQUV-2048-4", data="sim-p1-pol", imsize=2048, stokes="IQUV")]
    # Deconvolvers (niter > 0): images the minor cycle keeps, per channel plane.
    for imsize, nchan in ((1024, 4), (2048, 1), (4096, 1)):
        for deconvolver, scales in (("hogbom", []), ("clark", []), ("multiscale", [0, 5, 15]),
                                    ("multiscale", [0, 5, 15, 45]), ("mem", [])):
            if deconvolver == "mem" and imsize == 4096:
                continue
            tag = f"{deconvolver}{len(scales) or ''}"
            rows.append(_row(f"{tag}-{imsize}-{nchan}", imsize=imsize, nchan=nchan, niter=200,
                             deconvolver=deconvolver, scales=scales))
    rows.append(_row("hogbom-1024-16", nchan=16, niter=200))
    rows.append(_row("multiscale3-1024-16", nchan=16, niter=200, deconvolver="multiscale", scales=[0, 5, 15]))
    # Masks.
    for imsize, nchan in ((1024, 4), (2048, 4), (1024, 16)):
        rows.append(_row(f"pbmask-{imsize}-{nchan}", imsize=imsize, nchan=nchan, niter=200, usemask="pb",
                         pbmask=0.3))
        rows.append(_row(f"automask-{imsize}-{nchan}", imsize=imsize, nchan=nchan, niter=200,
                         usemask="auto-multithresh"))
    # savemodel (on a copy of the MS).
    rows += [_row("savemodel-1024-4", niter=200, savemodel="modelcolumn")]
    # w-projection: fixed planes and automatic (wprojplanes=-1); facets (widefield).
    for imsize, nchan in ((512, 4), (1024, 4), (2048, 1), (4096, 1)):
        for planes in (16, 64, -1):
            rows.append(_row(f"wproject{planes}-{imsize}-{nchan}", imsize=imsize, nchan=nchan, gridder="wproject",
                             wprojplanes=planes))
    rows.append(_row("wproject64-1024-16", nchan=16, gridder="wproject", wprojplanes=64))
    for imsize, nchan, facets, planes in ((1024, 4, 2, 1), (2048, 1, 2, 1), (1024, 4, 4, 1), (1024, 4, 2, 16)):
        rows.append(_row(f"widefield-f{facets}-w{planes}-{imsize}-{nchan}", imsize=imsize, nchan=nchan,
                         gridder="widefield", facets=facets, wprojplanes=planes))
    # Mosaic: one pointing (NGC5921 field 2, simulated p1) and 4, 9 pointings (simulated).
    for imsize, nchan in ((512, 4), (1024, 4), (2048, 1), (4096, 1), (1024, 16)):
        rows.append(_row(f"mosaic-ngc-{imsize}-{nchan}", imsize=imsize, nchan=nchan, gridder="mosaic"))
    for data in ("sim-p1", "sim-p4", "sim-p9"):
        for imsize, nchan in ((512, 4), (1024, 4), (2048, 1), (1024, 16)):
            rows.append(_row(f"mosaic-{data}-{imsize}-{nchan}", data=data, imsize=imsize, nchan=nchan,
                             gridder="mosaic"))
    rows.append(_row("mosaic-sim-p9-4096-1", data="sim-p9", imsize=4096, nchan=1, gridder="mosaic"))
    # Combinations (validation): several terms at once.
    rows += [
        _row("combo-mosaic-p4-briggs-ms-automask-1024-4", data="sim-p4", gridder="mosaic", weighting="briggs",
             deconvolver="multiscale", scales=[0, 5, 15], niter=200, usemask="auto-multithresh"),
        _row("combo-wproject-1-briggs-clark-2048-4", imsize=2048, gridder="wproject", wprojplanes=-1,
             weighting="briggs", deconvolver="clark", niter=200),
        _row("combo-IQUV-briggs-hogbom-1024-16", data="sim-p1-pol", nchan=16, stokes="IQUV", weighting="briggs",
             niter=200),
        _row("combo-mosaic-p9-pbmask-2048-4", data="sim-p9", imsize=2048, gridder="mosaic", niter=200,
             usemask="pb", pbmask=0.3),
    ]
    return rows


def shape_of(row: dict) -> TaskShape:
    pointings = DATASETS[row["data"]].pointings if DATASETS[row["data"]] else 1
    return TaskShape(
        pixels=row["imsize"] ** 2, stokes_planes=len(row["stokes"]) if row["stokes"] != "I" else 1,
        channels=row["nchan"], gridder=row["gridder"], wprojplanes=row["wprojplanes"], facets=row["facets"],
        pointings=pointings if row["gridder"] == "mosaic" else 1, deconvolver=row["deconvolver"],
        scales=len(row["scales"]) or 1, niter=row["niter"], usemask=row["usemask"], weighting=row["weighting"])


def tclean_params(row: dict, vis: Path) -> dict:
    from hpc_imager.cube_spec import TCLEAN_KEYWORDS

    params = {name: default for name, (_, default) in TCLEAN_KEYWORDS.items() if default is not ...}
    params.update(vis=str(vis), field=row["field"], phasecenter=row["phasecenter"], imsize=[row["imsize"]] * 2,
                  cell=[row["cell"]], specmode="cube", gridder=row["gridder"], wprojplanes=row["wprojplanes"],
                  facets=row["facets"], deconvolver=row["deconvolver"], scales=row["scales"],
                  usemask=row["usemask"], pbmask=row["pbmask"], weighting=row["weighting"], niter=row["niter"],
                  stokes=row["stokes"], savemodel=row["savemodel"], datacolumn="data")
    return params


def child(row_json: str) -> None:
    """In the fresh process: what a dask worker has loaded, then image_chunk as the worker calls it."""
    import distributed  # noqa: F401  (a worker has it loaded; its pages count in VmHWM)

    from hpc_imager.channel_grid import Chunk
    from hpc_imager.imaging_task import image_chunk

    job = json.loads(row_json)
    chunk = Chunk(index=0, first=0, nchan=job["row"]["nchan"], start=0, width=1)
    metrics = image_chunk(job["params"], chunk, job["run_dir"], attempt=1)
    print("METRICS " + json.dumps(metrics))


def _dataset(name: str, work: Path) -> Path:
    if DATASETS[name] is None:
        from hpc_imager.demo import make_ngc5921_ms

        return make_ngc5921_ms(work / "ngc5921.ms")
    return make_simulated_ms(work / f"{name}.ms", DATASETS[name])


def run_row(row: dict, work: Path, max_bytes: int, timeout: float) -> dict:
    vis = _dataset(row["data"], work)
    run_dir = work / "runs" / row["name"]
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if row["savemodel"] != "none":  # it writes the MS: image a copy
        copy = run_dir / "copy.ms"
        shutil.copytree(vis, copy)
        vis = copy
    job = {"row": row, "params": tclean_params(row, vis), "run_dir": str(run_dir)}
    process = subprocess.Popen([sys.executable, __file__, "child", json.dumps(job)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    watched, over, started = psutil.Process(process.pid), False, time.time()
    while process.poll() is None:
        try:
            if watched.memory_info().rss > max_bytes:
                over = True
                process.kill()
            elif time.time() - started > timeout:
                process.kill()
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    output = process.stdout.read()
    shutil.rmtree(run_dir, ignore_errors=True)
    metrics = next((json.loads(line[8:]) for line in output.splitlines() if line.startswith("METRICS ")), None)
    if metrics is None:
        reason = "over the memory cap" if over else ("timed out" if time.time() - started > timeout else "failed")
        return {"status": reason, "output_tail": output[-1500:]}
    return {"status": "ok", "peak_rss_bytes": metrics["peak_rss_bytes"], "wall_seconds": metrics["wall_seconds"]}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, RESULTS)


def run(args) -> None:
    casa_setup.configure_offline()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [r for r in design() if not args.only or any(o in r["name"] for o in args.only)]
    rows.sort(key=lambda r: task_peak_bytes(shape_of(r)))  # cheap first: most rows early
    max_bytes = int(args.max_gib * GIB)
    for row in rows:
        results = load_results()
        if row["name"] in results and (results[row["name"]]["status"] == "ok" or not args.retry_failed):
            continue
        estimate = task_peak_bytes(shape_of(row))
        disk = row["imsize"] ** 2 * row["nchan"] * (len(row["stokes"]) if row["stokes"] != "I" else 1) \
            * BYTES_PER_PRODUCT_PIXEL
        if estimate > max_bytes or disk > args.max_disk_gib * GIB:
            print(f"{row['name']}: skipped (estimate {estimate / GIB:.1f} GiB, products {disk / GIB:.1f} GiB)",
                  flush=True)
            continue
        while psutil.virtual_memory().available < estimate + 2 * GIB:
            print(f"{row['name']}: waiting for {(estimate + 2 * GIB) / GIB:.1f} GiB free", flush=True)
            time.sleep(30)
        outcome = run_row(row, work, max_bytes, args.timeout)
        outcome.update(row=row, measured_on=time.strftime("%Y-%m-%d %H:%M"))
        results = load_results()
        results[row["name"]] = outcome
        save_results(results)
        peak = outcome.get("peak_rss_bytes")
        print(f"{row['name']}: {outcome['status']}" + (f" peak {peak / GIB:.2f} GiB, estimate "
              f"{estimate / GIB:.2f} GiB, {outcome['wall_seconds']:.0f} s" if peak else ""), flush=True)


def report(args) -> None:
    from hpc_imager.estimate import fit_memory_model, leave_one_out

    rows = [(shape_of(r["row"]), r["peak_rss_bytes"], name) for name, r in sorted(load_results().items())
            if r["status"] == "ok"]
    constants = fit_memory_model([(s, p) for s, p, _ in rows])
    print("fitted constants:", json.dumps(constants, indent=1))
    loo = leave_one_out([(s, p) for s, p, _ in rows])
    worst = (None, 1.0)
    print(f"{'row':48s} {'measured':>9s} {'estimate':>9s} {'ratio':>6s} {'LOO':>6s}")
    for (shape, peak, name), loo_ratio in zip(rows, loo):
        ratio = task_peak_bytes(shape) / peak
        print(f"{name:48s} {peak / GIB:9.2f} {task_peak_bytes(shape) / GIB:9.2f} {ratio:6.2f} {loo_ratio:6.2f}")
        if abs(loo_ratio - 1.075) > abs(worst[1] - 1.075):
            worst = (name, loo_ratio)
    print(f"{len(rows)} rows; worst leave-one-out ratio {worst[1]:.2f} ({worst[0]})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--work", default="/tmp/hpc_imager-memory-matrix")
    run_parser.add_argument("--max-gib", type=float, default=9.0)
    run_parser.add_argument("--max-disk-gib", type=float, default=8.0)
    run_parser.add_argument("--timeout", type=float, default=1200)
    run_parser.add_argument("--only", nargs="*", help="rows whose name contains one of these")
    run_parser.add_argument("--retry-failed", action="store_true")
    sub.add_parser("report")
    child_parser = sub.add_parser("child")
    child_parser.add_argument("job")
    args = parser.parse_args()
    if args.command == "child":
        child(args.job)
    elif args.command == "run":
        run(args)
    else:
        report(args)


if __name__ == "__main__":
    main()
