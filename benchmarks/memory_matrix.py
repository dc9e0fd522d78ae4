"""Peak memory of one imaging task over a matrix of tclean settings, against hpc_imager's estimate.

Each row runs in a FRESH process that imports what a dask worker imports and then calls
``hpc_imager.imaging.imaging_task.image_chunk`` itself (clear_refs, tclean, VmHWM), so the figure is the one
a worker reports. The matrix varies one factor at a time around a few base points (NGC5921 and
simulated VLA D-configuration cubes and mosaics from ``hpc_imager.simulated_ms``), plus a few
combinations; results go to ``benchmarks/results/memory_matrix.json`` (rows already there are
skipped: the script resumes). A row runs with CASA's own OpenMP threads (one per core) unless it sets
``omp_threads`` (a dask worker runs one): w-projection allocates a work screen per thread.

Safety on a shared machine: a row whose estimate (the model in hpc_imager/sizing/estimate.py) is over
``--max-gib`` (default 9) is skipped, a watchdog kills a row whose resident memory passes it
anyway, a row waits while the machine has less free memory than its estimate plus 2 GiB, and a
row whose products would take more than ``--max-disk-gib`` is refused before it starts.

    python benchmarks/memory_matrix.py run [--work DIR]      # measure (resumable)
    python benchmarks/memory_matrix.py report                 # estimate/measured, leave-one-out
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_imager.imaging import casa_setup  # noqa: E402
from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms  # noqa: E402
from hpc_imager.sizing.estimate import GIB, MsFacts, TaskShape, ms_facts, task_peak_bytes  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "memory_matrix.json"
DEFAULT_WORK = Path("/tmp/hpc_imager-memory-matrix")
# CASA log lines that say how big its convolution functions and caches were (kept with each row).
CASA_LOG_SIGNS = ("W projection using", "Memory used in gridding function", "Convolution support",
                  "onvolution function", "memory", "Memory", "planes", "facets")
NITER = 50  # enough minor cycles to allocate what the deconvolver keeps; more only take longer (mem is slow)
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
           "savemodel": "none", "omp_threads": 0}
    row.update(NGC)
    if settings.get("data", "ngc5921") != "ngc5921":
        row.update(SIM, field="")
    row.update(settings)
    row["name"] = name
    return row


def design() -> list[dict]:
    """One factor at a time around base points, plus combinations used to validate the model.

    Every factor is varied at two or three sizes, not crossed with every other. On a quiet 2-core
    machine most rows take under two minutes; wproject-1-4096-1 takes 25 (WPConvFunc computes 409
    planes of a 5000² screen, for the PSF and again for the residual), the mem rows 5 to 7.
    """
    rows = []
    # Size and channels (standard, hogbom, niter 0): the per pixel-channel term and the base.
    for imsize in (256, 512, 1024, 2048, 4096):
        rows.append(_row(f"std-{imsize}-4", imsize=imsize))
    for nchan in (1, 16, 63):
        rows.append(_row(f"std-1024-{nchan}", nchan=nchan))
    rows += [_row("std-4096-1", imsize=4096, nchan=1), _row("std-8192-1", imsize=8192, nchan=1),
             _row("sim-std-512-64", data="sim-p1", imsize=512, nchan=64)]
    # Weighting: the weight-density grid (per channel with perchanweightdensity).
    rows += [_row("briggs-1024-4", weighting="briggs"), _row("briggsbwtaper-1024-4", weighting="briggsbwtaper"),
             _row("briggs-2048-16", weighting="briggs", imsize=2048, nchan=16)]
    # Stokes planes.
    rows += [_row("sim-I-1024-4", data="sim-p1-pol", imsize=1024),
             _row("sim-IQUV-1024-4", data="sim-p1-pol", imsize=1024, stokes="IQUV")]
    # Deconvolvers (niter > 0): images the minor cycle keeps, per channel plane.
    decons = {"hogbom": [], "clark": [], "multiscale3": [0, 5, 15], "multiscale4": [0, 5, 15, 45], "mem": []}
    for tag, scales in decons.items():
        rows.append(_row(f"{tag}-1024-4", niter=NITER, deconvolver=tag.rstrip("34"), scales=scales))
    for tag in ("hogbom", "multiscale3", "multiscale4", "mem"):
        rows.append(_row(f"{tag}-2048-1", imsize=2048, nchan=1, niter=NITER, deconvolver=tag.rstrip("34"),
                         scales=decons[tag]))
    rows += [_row("multiscale3-4096-1", imsize=4096, nchan=1, niter=NITER, deconvolver="multiscale",
                  scales=[0, 5, 15]),
             _row("hogbom-2048-4", imsize=2048, niter=NITER),
             _row("multiscale3-2048-4", imsize=2048, niter=NITER, deconvolver="multiscale", scales=[0, 5, 15]),
             _row("multiscale3-2048-16", imsize=2048, nchan=16, niter=NITER, deconvolver="multiscale",
                  scales=[0, 5, 15]),
             _row("hogbom-1024-16", nchan=16, niter=NITER),
             _row("multiscale3-1024-16", nchan=16, niter=NITER, deconvolver="multiscale", scales=[0, 5, 15])]
    # Masks.
    rows.append(_row("pbmask-1024-4", niter=NITER, usemask="pb", pbmask=0.3))
    for imsize, nchan in ((1024, 4), (2048, 4), (1024, 16)):
        rows.append(_row(f"automask-{imsize}-{nchan}", imsize=imsize, nchan=nchan, niter=NITER,
                         usemask="auto-multithresh"))
    # savemodel (on a copy of the MS).
    rows += [_row("savemodel-1024-4", niter=NITER, savemodel="modelcolumn")]
    # w-projection: fixed planes and automatic (wprojplanes=-1); facets (widefield).
    for imsize, nchan, planes in ((512, 4, 16), (512, 4, 64), (512, 4, -1), (1024, 4, 16), (1024, 4, 64),
                                  (1024, 4, -1), (2048, 1, 64), (2048, 1, -1), (4096, 1, 16), (4096, 1, -1)):
        rows.append(_row(f"wproject{planes}-{imsize}-{nchan}", imsize=imsize, nchan=nchan, gridder="wproject",
                         wprojplanes=planes))
    # ... and what WPConvFunc's buffers overlap with: more channels, a larger image, weighting and a
    # minor cycle at the same planes; one OpenMP thread (a dask worker's) against CASA's default.
    rows += [_row("wproject16-2048-4", imsize=2048, gridder="wproject", wprojplanes=16),
             _row("wproject64-2048-4", imsize=2048, gridder="wproject", wprojplanes=64),
             _row("wproject-1-2048-4", imsize=2048, gridder="wproject", wprojplanes=-1),
             _row("wproject-1-2048-16", imsize=2048, nchan=16, gridder="wproject", wprojplanes=-1),
             _row("wproject16-4096-4", imsize=4096, gridder="wproject", wprojplanes=16),
             _row("wproject64-briggs-hogbom-2048-4", imsize=2048, gridder="wproject", wprojplanes=64,
                  weighting="briggs", niter=NITER),
             _row("wproject16-4096-1-omp1", imsize=4096, nchan=1, gridder="wproject", wprojplanes=16, omp_threads=1),
             _row("wproject16-8192-1-omp1", imsize=8192, nchan=1, gridder="wproject", wprojplanes=16, omp_threads=1),
             _row("std-2048-4-omp1", imsize=2048, omp_threads=1)]
    for facets, planes in ((2, 16), (4, 16)):
        rows.append(_row(f"widefield-f{facets}-w{planes}-1024-4", gridder="widefield", facets=facets,
                         wprojplanes=planes))
    # Mosaic: one pointing (NGC5921 field 2, simulated p1) and 4, 9 pointings (simulated).
    for imsize, nchan in ((1024, 4), (2048, 1), (2048, 4), (4096, 1)):
        rows.append(_row(f"mosaic-ngc-{imsize}-{nchan}", imsize=imsize, nchan=nchan, gridder="mosaic"))
    for data, sizes in (("sim-p1", ((1024, 4),)), ("sim-p4", ((512, 4), (1024, 4), (2048, 1))),
                        ("sim-p9", ((512, 4), (1024, 4)))):
        for imsize, nchan in sizes:
            rows.append(_row(f"mosaic-{data}-{imsize}-{nchan}", data=data, imsize=imsize, nchan=nchan,
                             gridder="mosaic"))
    # Combinations (validation): several terms at once.
    rows += [
        _row("combo-mosaic-p4-briggs-ms-automask-1024-4", data="sim-p4", gridder="mosaic", weighting="briggs",
             deconvolver="multiscale", scales=[0, 5, 15], niter=NITER, usemask="auto-multithresh"),
        _row("combo-wproject-1-briggs-clark-2048-4", imsize=2048, gridder="wproject", wprojplanes=-1,
             weighting="briggs", deconvolver="clark", niter=NITER),
        _row("combo-IQUV-briggs-hogbom-1024-16", data="sim-p1-pol", nchan=16, stokes="IQUV", weighting="briggs",
             niter=NITER),
    ]
    return rows


_FACTS: dict[tuple[str, str], MsFacts] = {}


def shape_of(row: dict, work: Path = DEFAULT_WORK) -> TaskShape:
    """The row's task as the estimate sees it (the MS's facts read once per data set and gridder)."""
    key = (row["data"], row["gridder"])
    if key not in _FACTS:
        _FACTS[key] = ms_facts(str(_dataset(row["data"], work)), row["gridder"])
    return TaskShape(
        nx=row["imsize"], ny=row["imsize"], stokes_planes=1 if row["stokes"] == "I" else len(row["stokes"]),
        channels=row["nchan"], cell_rad=math.radians(float(row["cell"].removesuffix("arcsec")) / 3600),
        gridder=row["gridder"], wprojplanes=row["wprojplanes"], facets=row["facets"],
        deconvolver=row["deconvolver"], scales=len(row["scales"]) or 1, niter=row["niter"], usemask=row["usemask"],
        weighting=row["weighting"], ms=_FACTS[key], casa_memory_bytes=psutil.virtual_memory().total,
        omp_threads=row.get("omp_threads") or os.cpu_count())


def tclean_params(row: dict, vis: Path) -> dict:
    from hpc_imager.inputs.cube_spec import TCLEAN_KEYWORDS

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

    from hpc_imager.imaging.channel_grid import Chunk
    from hpc_imager.imaging.imaging_task import image_chunk

    job = json.loads(row_json)
    chunk = Chunk(index=0, first=0, nchan=job["row"]["nchan"], start=0, width=1)
    metrics = image_chunk(job["params"], chunk, job["run_dir"], attempt=1)
    log = Path(job["run_dir"]) / "logs" / f"{chunk.name}.attempt-1.casa.log"
    metrics["casa_log"] = [line.split("\t")[-1].strip() for line in log.read_text().splitlines()
                           if any(sign in line for sign in CASA_LOG_SIGNS)][:40]
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
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if row.get("omp_threads"):
        env["OMP_NUM_THREADS"] = str(row["omp_threads"])
    process = subprocess.Popen([sys.executable, __file__, "child", json.dumps(job)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
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
    return {"status": "ok", "peak_rss_bytes": metrics["peak_rss_bytes"], "wall_seconds": metrics["wall_seconds"],
            "casa_log": metrics.get("casa_log", [])}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(results: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, RESULTS)


# Measured first, in this order: what identifies each term soonest on a slow, shared machine.
FIRST = ["mosaic-ngc-1024-4", "wproject-1-2048-1", "std-1024-16", "automask-1024-4", "mosaic-sim-p9-512-4",
         "multiscale3-2048-1", "wproject64-1024-4", "wproject-1-1024-4", "automask-2048-4", "hogbom-2048-1",
         "std-2048-4", "sim-IQUV-1024-4", "briggs-2048-16", "mosaic-sim-p1-1024-4", "mosaic-sim-p4-1024-4",
         "std-4096-1", "multiscale3-4096-1", "std-1024-63", "combo-mosaic-p4-briggs-ms-automask-1024-4",
         "combo-wproject-1-briggs-clark-2048-4"]


def _breadth_first(rows: list[dict], work: Path) -> list[dict]:
    """The FIRST rows, then the cheapest first within each family (std, mosaic, wproject, ...),
    families taken in turn: an interrupted run has measured every factor at its smaller sizes."""
    first = sorted((r for r in rows if r["name"] in FIRST), key=lambda r: FIRST.index(r["name"]))
    families: dict[str, list[dict]] = {}
    for row in sorted((r for r in rows if r["name"] not in FIRST), key=lambda r: task_peak_bytes(shape_of(r, work))):
        families.setdefault(row["name"].split("-")[0], []).append(row)
    ordered = first
    while any(families.values()):
        for family in families.values():
            if family:
                ordered.append(family.pop(0))
    return ordered


def run(args) -> None:
    casa_setup.configure_offline()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    rows = [r for r in design() if not args.only or any(o in r["name"] for o in args.only)]
    rows = _breadth_first(rows, work)
    max_bytes = int(args.max_gib * GIB)
    for row in rows:
        results = load_results()
        if row["name"] in results and (results[row["name"]]["status"] == "ok" or not args.retry_failed):
            continue
        estimate = task_peak_bytes(shape_of(row, work))
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
    """Every measured row: measured, the model's estimate (hpc_imager/sizing/estimate.py's constants), and
    the estimate of terms fitted without that row (leave-one-out); the refitted constants."""
    from benchmarks.memory_fit import fit_memory_terms, leave_one_out
    from hpc_imager.sizing.estimate import MEMORY_TERMS, peak_phase

    casa_setup.configure_offline()
    work = Path(args.work)
    rows = [(shape_of(r["row"], work), r["peak_rss_bytes"], name) for name, r in sorted(load_results().items())
            if r["status"] == "ok" and not any(x in name for x in args.exclude)]
    samples = [(s, p) for s, p, _ in rows]
    fitted = fit_memory_terms(samples)
    if args.markdown:
        from hpc_imager.sizing.estimate import TERM_UNITS

        print("| term | bytes per unit (estimate.py) | unit | fitted on these rows |\n|---|---|---|---|")
        for name, value in fitted.items():
            print(f"| `{name}` | {MEMORY_TERMS[name]:.4g} | {TERM_UNITS[name]} | {value:.4g} |")
    else:
        print("terms fitted on every row (bytes per unit):")
        for name, value in fitted.items():
            print(f"  {name:18s} {value:14.4g}   (estimate.py: {MEMORY_TERMS[name]:.4g})")
    loo = leave_one_out(samples)
    if args.markdown:
        print("\n| row | measured GiB | estimate GiB | peak moment | estimate/measured | leave-one-out |\n"
              "|---|---|---|---|---|---|")
    else:
        print(f"\n{'row':46s} {'measured':>9s} {'estimate':>9s} {'moment':>11s} {'ratio':>6s} {'LOO':>6s}  (GiB)")
    for (shape, peak, name), loo_ratio in zip(rows, loo):
        estimate = task_peak_bytes(shape)
        moment = peak_phase(shape)[0]
        flag = "" if 0.95 <= loo_ratio <= 1.20 else "  <-- outside 0.95…1.20"
        if args.markdown:
            print(f"| {name} | {peak / GIB:.2f} | {estimate / GIB:.2f} | {moment} | {estimate / peak:.2f} | "
                  f"{loo_ratio:.2f} |")
        else:
            print(f"{name:46s} {peak / GIB:9.2f} {estimate / GIB:9.2f} {moment:>11s} {estimate / peak:6.2f} "
                  f"{loo_ratio:6.2f}{flag}")
    low, high = min(loo), max(loo)
    print(f"\n{len(rows)} rows; leave-one-out ratios {low:.2f} … {high:.2f}")
    skipped = {name: r["status"] for name, r in load_results().items() if r["status"] != "ok"}
    if skipped:
        print("not measured:", ", ".join(f"{n} ({s})" for n, s in sorted(skipped.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run")
    run_parser.add_argument("--work", default=str(DEFAULT_WORK))
    run_parser.add_argument("--max-gib", type=float, default=9.0)
    run_parser.add_argument("--max-disk-gib", type=float, default=8.0)
    run_parser.add_argument("--timeout", type=float, default=900)
    run_parser.add_argument("--only", nargs="*", help="rows whose name contains one of these")
    run_parser.add_argument("--retry-failed", action="store_true")
    report_parser = sub.add_parser("report")
    report_parser.add_argument("--work", default=str(DEFAULT_WORK))
    report_parser.add_argument("--exclude", nargs="*", default=[], help="leave rows whose name contains these out")
    report_parser.add_argument("--markdown", action="store_true", help="the table as Markdown (docs/memory-policy.md)")
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
