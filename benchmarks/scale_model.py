"""The final cube's assembly at the seed's reference size: measured here, then modelled.

``measure RUN_DIR ...`` takes finished runs made with ``keep_parts = true`` and assembles their parts
again both ways in a scratch folder, one after the other in this process: the placed assembly
(``concat.CubeAssembly``: its thread's CPU seconds, its wall seconds, what it hands to write()) and
the virtual one (``concat.VirtualAssembly``). ``virtual N ...``: the virtual concatenation of N one-channel parts.
``model PLACING.json VIRTUAL.json`` prints the reference cube
(8000² × 7677 channels, one channel a task) on 12, 100 and 1000 workers as a markdown table.

    .venv/bin/python benchmarks/scale_model.py measure /tmp/x/cube.hpcrun ... > benchmarks/results/placing-....json
    .venv/bin/python benchmarks/scale_model.py virtual 250 1000 4000 7677 > benchmarks/results/virtual-parts-....json
    .venv/bin/python benchmarks/scale_model.py model benchmarks/results/placing-2026-12-02T2020.json \
        benchmarks/results/virtual-parts-2026-12-02T2050.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

# The reference cube of the seed (issue 21): 8000² pixels, 7677 channels, one channel a task.
REFERENCE = {"pixels": 8000 * 8000, "channels": 7677, "bytes_per_pixel": 4}  # × the plan's FULL_SIZE_PRODUCTS
WORKERS = (12, 100, 1000)
# Seconds one task (one channel) of the reference cube takes on one worker, two ways:
# CASA Memo 13, 7680 channels of a 209 GB ALMA MS on 8 MPI processes in 55.5 h;
# and this project's fastest measured imaging (NGC5921 1024², niter 0, 53.6 s of tasks for 63 channels)
# scaled by pixels, a lower bound (NGC5921 has few visibilities: gridding is a small share of it).
TASK_SECONDS = {"Memo 13 (55.5 h × 8 / 7680 ch)": 55.5 * 3600 * 8 / 7680,
                "NGC5921 1024² niter 0, × pixels": 53.64 / (63 * 1024**2) * 8000**2}


def _chunks(parts: Path):
    from casatools import image

    from hpc_imager.imaging.channel_grid import Chunk

    chunks, first = [], 0
    for index, folder in enumerate(sorted(parts.iterdir())):
        ia = image()
        ia.open(str(folder / "part.psf"))
        nchan = int(ia.shape()[-1])
        ia.done()
        chunks.append(Chunk(index=index, first=first, nchan=nchan, start=first, width=1))
        first += nchan
    return chunks


def measure(run_dirs: list[str]) -> dict:
    from hpc_imager.imaging import casa_setup
    from hpc_imager.run.concat import CubeAssembly, VirtualAssembly

    casa_setup.configure_offline()
    rows = []
    for run_dir in map(Path, run_dirs):
        chunks = _chunks(run_dir / "parts")
        with tempfile.TemporaryDirectory(prefix="assembly-measure-", dir=os.environ.get("TMPDIR", "/tmp")) as scratch:
            row = {"run": str(run_dir), "chunks": len(chunks), "nchan": sum(c.nchan for c in chunks),
                   "load_before": os.getloadavg()[0]}
            for kind in ("placed", "virtual"):
                work = Path(scratch) / kind
                (work / "run").mkdir(parents=True)
                os.symlink(run_dir / "parts", work / "run" / "parts")
                params = {"imagename": str(work / "cube")}
                if kind == "placed":
                    assembly = CubeAssembly(work / "run", chunks, params, None, placed=set())
                    for chunk in chunks:
                        assembly.arrived(chunk)
                else:
                    assembly = VirtualAssembly(work / "run", chunks, params)
                started = time.time()
                try:
                    assembly.place_waiting(lambda index: None)
                    report = assembly.finish(lambda index: None)
                finally:
                    assembly.close()
                row[kind] = {**report, "wall_seconds": round(time.time() - started, 3)}
            placed = row["placed"]
            product = placed["product_bytes"]
            row["placing_bytes_per_cpu_second"] = product / placed["placing_cpu_seconds"]
            row["placing_bytes_per_wall_second"] = product / placed["placing_seconds"]
            row["written_per_product_byte"] = placed["concat_bytes_written"] / product
            row["virtual_seconds_per_part_product"] = row["virtual"]["concat_seconds"] / (
                len(chunks) * len(row["virtual"]["products"]))
            row["load_after"] = os.getloadavg()[0]
            rows.append(row)
    return {"measured_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "runs": rows}


def virtual_many(counts: list[int]) -> list[dict]:
    """imageconcat (nomovevirtual) of ``n`` one-channel 16² images with contiguous frequencies: its
    cost per part as the parts grow towards the reference cube's 7677, and what opening the virtual
    cube and reading one spectrum (every part opened: ``tempclose``) then costs."""
    from hpc_imager.imaging import casa_setup

    casa_setup.configure_offline()
    from casatools import image

    rows = []
    with tempfile.TemporaryDirectory(prefix="assembly-virtual-") as scratch:
        template = image()
        template.fromshape(f"{scratch}/template", [16, 16, 1, 1])
        record = template.coordsys().torecord()
        template.done()
        spectral = next(k for k in record if k.startswith("spectral"))
        first, step = record[spectral]["wcs"]["crval"], record[spectral]["wcs"]["cdelt"]
        for n in counts:
            infiles = [f"{scratch}/{n}/chunk-{i:05d}" for i in range(n)]
            os.makedirs(f"{scratch}/{n}")
            for i, name in enumerate(infiles):
                record[spectral]["wcs"]["crval"] = first + i * step
                part = image()
                part.fromshape(name, [16, 16, 1, 1], csys=record)
                part.done()
            started, cpu = time.time(), time.process_time()
            image().imageconcat(outfile=f"{scratch}/{n}.concat", infiles=infiles, axis=-1, relax=False,
                                tempclose=True, overwrite=False, mode="nomovevirtual").done()
            row = {"parts": n, "concat_wall": time.time() - started, "concat_cpu": time.process_time() - cpu,
                   "load": os.getloadavg()[0]}
            started = time.time()
            cube = image()
            cube.open(f"{scratch}/{n}.concat")
            cube.getchunk(blc=[8, 8, 0, 0], trc=[8, 8, 0, n - 1])
            cube.done()
            rows.append(row | {"open_and_read_one_spectrum": time.time() - started})
    return rows


def model(measured: dict, virtual: list[dict]) -> str:
    """The reference cube's imaging and assembly times, hours, as a markdown table. The placing rate is
    the thread's wall rate on the largest parts measured (per-part costs shrink with the part: 8000²
    one-channel parts are 256 MB a product); the virtual tail is the wall time of the concatenation
    of the most parts measured (``virtual``), scaled to the cube's channels, once per product."""
    from hpc_imager.sizing.plan import FULL_SIZE_PRODUCTS, PLACING_BYTES_PER_SECOND, PLACING_SHARE

    largest = max(measured["runs"], key=lambda r: r["placed"]["product_bytes"])
    wall_rate, cpu_rate = largest["placing_bytes_per_wall_second"], largest["placing_bytes_per_cpu_second"]
    most = max(virtual, key=lambda r: r["parts"])
    virtual_per_part = most["concat_wall"] / most["parts"]
    product_bytes = REFERENCE["pixels"] * REFERENCE["channels"] * FULL_SIZE_PRODUCTS * REFERENCE["bytes_per_pixel"]
    placing_h, placing_cpu_h = product_bytes / wall_rate / 3600, product_bytes / cpu_rate / 3600
    virtual_h = REFERENCE["channels"] * FULL_SIZE_PRODUCTS * virtual_per_part / 3600
    lines = [f"Products {product_bytes / 1e12:.1f} TB. One placing thread: {wall_rate / 1e6:.0f} MB/s of product"
             f" ({cpu_rate / 1e6:.0f} MB/s per CPU second) → {placing_h:.1f} h ({placing_cpu_h:.1f} h of CPU),"
             f" writing {product_bytes * largest['written_per_product_byte'] / 1e12:.0f} TB. Virtual concatenation:"
             f" {most['concat_wall']:.0f} s for {most['parts']} parts (load {most['load']:.0f}) → {virtual_h * 3600:.0f} s"
             " after the last chunk, one product after another.",
             "",
             "| one task (one channel) | workers | imaging | placing / imaging | run, placed | run, virtual | auto picks |",
             "|---|---|---|---|---|---|---|"]
    for label, seconds in TASK_SECONDS.items():
        for workers in WORKERS:
            imaging_h = -(-REFERENCE["channels"] // workers) * seconds / 3600
            produced = workers * FULL_SIZE_PRODUCTS * 4 * REFERENCE["pixels"] / seconds
            pick = "virtual" if produced > PLACING_SHARE * PLACING_BYTES_PER_SECOND else "placed"
            critical = "critical" if placing_h > imaging_h else "keeps up"
            lines.append(f"| {label}: {seconds:.0f} s | {workers} | {imaging_h:.2f} h | {placing_h / imaging_h:.2f} × ({critical})"
                         f" | {max(imaging_h, placing_h):.2f} h | {imaging_h + virtual_h:.2f} h | {pick} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["measure"]:
        print(json.dumps(measure(sys.argv[2:]), indent=2))
    elif sys.argv[1:2] == ["virtual"]:
        print(json.dumps(virtual_many([int(n) for n in sys.argv[2:]]), indent=2))
    elif sys.argv[1:2] == ["model"]:
        print(model(json.loads(Path(sys.argv[2]).read_text()), json.loads(Path(sys.argv[3]).read_text())))
    else:
        sys.exit(__doc__)
