"""report.png: a run at a glance, drawn from its journal (and report.json when the run has ended).

Top: a timeline with one row per worker; each finished attempt is a bar from the start of its
tclean (the journal's done time minus the task's wall_seconds) to its end, with a thin line from
its submission, so time spent queued or setting up a worker shows as the gap. Failed attempts have
no worker in the journal (the worker may be dead), so they get their own row, in red. Bottom: each
chunk's peak memory against its worker's memory limit (each pass's limit when chunks were retried
with more memory), retried chunks outlined.
"""

from __future__ import annotations

from pathlib import Path

from .status import _events, read_status


def write_report_png(run_dir: Path, path: Path | None = None) -> Path:
    """Draw the run in ``run_dir`` into ``path`` (default ``<run_dir>/report.png``); return the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = Path(path or run_dir / "report.png")
    status = read_status(run_dir)
    events = _events(run_dir / "journal.jsonl")
    t0 = min((e["time"] for e in events), default=0.0)
    submitted = {(e["chunk"], e["attempt"]): e["time"] for e in events if e["event"] == "submitted"}
    done = [e for e in events if e["event"] == "done"]
    failed = [e for e in events if e["event"] == "failed"]

    workers = sorted({str(e["metrics"].get("worker", "?")) for e in done})
    rows = workers + (["failed attempts"] if failed else [])
    row_of = {name: i for i, name in enumerate(rows)}
    retried = {c.index for c in status.chunks.values() if c.attempts > 1}

    fig, (timeline, memory) = plt.subplots(2, 1, figsize=(11, 3 + 0.35 * len(rows) + 3),
                                           gridspec_kw={"height_ratios": [max(1, len(rows)), 3]})
    for e in done:
        m = e["metrics"]
        y = row_of[str(m.get("worker", "?"))]
        end = e["time"] - t0
        start = end - m["wall_seconds"]
        queued = submitted.get((e["chunk"], e["attempt"]), e["time"]) - t0
        timeline.plot([queued, start], [y, y], color="0.6", lw=1)
        timeline.barh(y, m["wall_seconds"], left=start, height=0.6,
                      color="tab:orange" if e["chunk"] in retried else "tab:blue", edgecolor="black", lw=0.4)
        if m["wall_seconds"] > 0.04 * max(1.0, status.last_event - t0 if status.last_event else 1.0):
            timeline.text(start + m["wall_seconds"] / 2, y, str(e["chunk"]), ha="center", va="center",
                          fontsize=7, color="white")
    for e in failed:
        y = row_of["failed attempts"]
        start = submitted.get((e["chunk"], e["attempt"]), e["time"]) - t0
        timeline.barh(y, max(e["time"] - t0 - start, 0.2), left=start, height=0.6, color="tab:red")
        timeline.text(e["time"] - t0, y, f" {e['chunk']}", va="center", fontsize=7, color="tab:red")
    for c in status.chunks.values():  # running now (or when the driver died): open bars
        if c.state == "running" and c.submitted_at:
            timeline.plot([c.submitted_at - t0], [len(rows) - 0.5], marker=">", color="tab:green")
    timeline.set_yticks(range(len(rows)), [f"worker {r}" if r in workers else r for r in rows])
    timeline.invert_yaxis()
    timeline.set_xlabel("seconds since the first submission")
    d = status.as_dict()
    timeline.set_title(f"{Path(str(d['imagename'])).name}: {d['status']}, {d['done']}/{d['chunks']} chunks done,"
                       f" {d['failed_attempts']} failed attempts (blue: tclean per chunk, orange: retried chunk,"
                       " grey: queued/set-up, red: failed)", fontsize=9)

    chunks = [e["chunk"] for e in done]
    peaks = [e["metrics"]["peak_rss_bytes"] / 2**30 for e in done]
    memory.bar(chunks, peaks, color=["tab:orange" if c in retried else "tab:blue" for c in chunks])
    plans = [((status.report or {}).get("plan") or status.identity.get("plan"))]
    plans = [p for p in plans if p] + list((status.report or {}).get("memory_retries", []))
    for number, plan in enumerate(plans):
        limit = plan.get("worker_memory_limit_bytes") or 0
        label = "worker memory limit" if limit else "node memory per worker (limit off)"
        if not limit and plan.get("processes_per_job"):
            limit = plan["job_memory_bytes"] / plan["processes_per_job"]
        if limit:
            memory.axhline(limit / 2**30, color="tab:red" if number == 0 else "tab:purple", ls="--",
                           label=f"{label}{' (pass %d)' % (number + 1) if len(plans) > 1 else ''}:"
                                 f" {limit / 2**30:.2f} GiB")
    memory.set_xlabel("chunk")
    memory.set_ylabel("peak memory (GiB)")
    memory.set_yscale("log")
    if plans:
        memory.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path
