"""How the run grows with the number of channels: one simulated cube per size, one- or two-channel tasks.

    python benchmarks/channel_sweep.py [--sizes 512,1024,2048,4096] [--channels-per-task 2] [--imsize 32]

For each size a simulated MS of one 30 s integration (hpc_imager/simulated_ms.py; 72 MB at 4096
channels) is imaged at a small image size, niter 0, by serial tclean (a fresh process) and by
``python -m hpc_imager submit --site local`` (2 workers), and the two cubes are compared plane by
plane. Measured per size: both wall times, the driver process's own CPU and peak RSS (sampled every
0.2 s with psutil; the local workers are its children and are not counted), the journal's and
report.json's bytes, the wall time of ``status`` while the run goes on and once it is done, and
report.json's assembly figures (the tail after the last chunk, the placing thread's time, the bytes
it wrote against the products'). Also bench.py's part ``sweep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.bench import _env, _load, difference_from_serial, serial_tclean  # noqa: E402


def _timed_status(run_dir: Path) -> tuple[float, dict]:
    started = time.time()
    out = subprocess.run([sys.executable, "-m", "hpc_imager", "status", "--json", str(run_dir)], capture_output=True,
                         text=True, env=_env(), check=True).stdout
    return time.time() - started, json.loads(out)


def hpc_imager_watched(params: dict, chunk: int, work: Path, name: str) -> dict:
    """Run the CLI driver, sampling its own CPU and RSS and timing ``status`` every 10 s while it runs."""
    import psutil
    import tomlkit

    cube = tomlkit.document()
    cube["tclean"] = dict(params, imagename=str(work / name))
    cube["parallel"] = {"workers": 2, "channels_per_task": chunk}
    toml = work / f"{name}.toml"
    toml.write_text(tomlkit.dumps(cube))
    run_dir = work / f"{name}.hpcrun"
    started = time.time()
    with open(work / f"{name}.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "hpc_imager", "submit", "--site", "local", str(toml)],
                                  stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=work)
    process = psutil.Process(driver.pid)
    peak_rss, cpu, status_running, asked = 0, 0.0, [], time.time()
    while driver.poll() is None:
        try:
            peak_rss = max(peak_rss, process.memory_info().rss)
            times = process.cpu_times()
            cpu = times.user + times.system
        except psutil.NoSuchProcess:
            break
        if time.time() - asked > 10 and (run_dir / "journal.jsonl").exists():
            seconds, state = _timed_status(run_dir)
            status_running.append({"seconds": round(seconds, 2), "done": state["done"], "load": _load()})
            asked = time.time()
        time.sleep(0.2)
    wall = time.time() - started
    if driver.returncode:
        raise RuntimeError(f"hpc_imager failed (exit {driver.returncode}); see {work / name}.log")
    status_done, state = _timed_status(run_dir)
    report = json.loads((run_dir / "report.json").read_text())
    concat = report["concat"]
    return {
        "wall_seconds": round(wall, 2), "imaging_seconds": round(report["imaging_seconds"], 2),
        "tasks": report["chunks"], "driver_cpu_seconds": round(cpu, 2), "driver_peak_rss_bytes": peak_rss,
        "journal_bytes": (run_dir / "journal.jsonl").stat().st_size,
        "report_json_bytes": (run_dir / "report.json").stat().st_size,
        "status_running_seconds": status_running, "status_done_seconds": round(status_done, 2),
        "status_done": {k: state[k] for k in ("status", "chunks", "done", "placed")},
        "concat_tail_seconds": round(concat["concat_seconds"], 2), "placing_seconds": round(concat["placing_seconds"], 2),
        "placing_cpu_seconds": concat["placing_cpu_seconds"], "concat_bytes_written": concat["concat_bytes_written"],
        "product_bytes": concat["product_bytes"],
    }


def sweep(sizes: list[int], chunk: int, imsize: int, work: Path, out: Path | None = None) -> list[dict]:
    """Each size's row; written to ``out`` after every size, so a killed sweep keeps what it measured."""
    from hpc_imager.simulated_ms import SimulatedObservation, make_simulated_ms

    rows = []
    for nchan in sizes:
        ms = make_simulated_ms(work / f"sim{nchan}.ms", SimulatedObservation(
            nchan=nchan, integration_seconds=30, seconds_per_pointing=30))
        params = {"vis": str(ms), "specmode": "cube", "imsize": [imsize, imsize], "cell": ["15arcsec"],
                  "phasecenter": "J2000 12h00m00s +40d00m00s", "datacolumn": "data", "niter": 0}
        load_before = _load()
        serial = serial_tclean(params, work, f"serial{nchan}")
        ours = hpc_imager_watched(params, chunk, work, f"cube{nchan}")
        row = {"nchan": nchan, "channels_per_task": chunk, "imsize": imsize, "load_before": load_before,
               "load_after": _load(), "serial_seconds": round(serial, 2), **ours,
               "vs_serial": difference_from_serial(work / f"serial{nchan}.image", work / f"cube{nchan}.image")}
        print(json.dumps(row), flush=True)
        rows.append(row)
        if out:
            out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2))
        for path in work.glob(f"*{nchan}*"):  # a size's cubes and MS: the next size needs the disk
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024,2048,4096")
    parser.add_argument("--channels-per-task", type=int, default=2)
    parser.add_argument("--imsize", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    from hpc_imager.imaging import casa_setup

    casa_setup.configure_offline()
    work = Path(tempfile.mkdtemp(prefix="hpc_imager-sweep-"))
    started = time.strftime("%Y-%m-%dT%H%M", time.gmtime())
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"sweep-{started}.json"
    try:
        sweep([int(n) for n in args.sizes.split(",")], args.channels_per_task, args.imsize, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
