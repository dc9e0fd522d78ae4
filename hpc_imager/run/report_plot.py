"""report.png: a run at a glance, drawn from its journal (and report.json when the run has ended).

Top: a timeline with one row per worker; each finished task is a bar from its start (the journal's
done time minus the task's own seconds) to its end, with a thin line from its submission, so time
spent queued or setting up a worker shows as the gap. A task images a whole chunk, or, in whole-cube
iteration, runs one step of it (PSF, a cycle, the restore). Failed attempts have no worker in the
journal (the worker may be dead), so they get their own row, in red. Bottom: each chunk's peak
memory against its worker's memory limit (each pass's limit when chunks were retried with more
memory), retried chunks in orange.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .status import journal_events, read_status


@dataclass(frozen=True)
class Bar:
    """One attempt on the timeline: seconds since the run's first submission."""

    chunk: int
    attempt: int
    row: str  # the worker's name, or "failed attempts"
    submitted: float
    start: float
    end: float
    kind: str  # "done" (a whole chunk) | "step" (a step of whole-cube iteration) | "failed"
    step: str | None = None


def timeline(run_dir: Path) -> list[Bar]:
    """Every finished or failed attempt in the run's journal, as drawn in report.png."""
    events = journal_events(Path(run_dir) / "journal.jsonl")
    t0 = min((e["time"] for e in events), default=0.0)
    submitted = {(e["chunk"], e["attempt"]): e["time"] - t0 for e in events if e["event"] == "submitted"}
    stepped = {e["chunk"] for e in events if e["event"] == "step done"}  # whole-cube iteration: the steps are the bars
    bars = []
    for e in events:
        end = e["time"] - t0
        queued = submitted.get((e.get("chunk"), e.get("attempt")), end)
        if e["event"] == "done" and e["chunk"] not in stepped:
            m = e["metrics"]
            bars.append(Bar(e["chunk"], e["attempt"], str(m.get("worker", "?")), queued,
                            max(queued, end - m["wall_seconds"]), end, "done"))
        elif e["event"] == "step done":
            m = e["metrics"]
            bars.append(Bar(e["chunk"], e["attempt"], str(m.get("worker", "?")), queued,
                            max(queued, end - m["seconds"]), end, "step", e["step"]))
        elif e["event"] == "failed":
            bars.append(Bar(e["chunk"], e["attempt"], "failed attempts", queued, queued, end, "failed", e.get("step")))
    return bars


def write_report_png(run_dir: Path, path: Path | None = None) -> Path:
    """Draw the run in ``run_dir`` into ``path`` (default ``<run_dir>/report.png``); return the path."""
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure  # no pyplot: no global figure state, safe beside the driver's threads

    run_dir = Path(run_dir)
    path = Path(path or run_dir / "report.png")
    status = read_status(run_dir)
    bars = timeline(run_dir)
    t0 = status.first_event or 0.0
    workers = sorted({b.row for b in bars if b.kind != "failed"})
    rows = workers + (["failed attempts"] if any(b.kind == "failed" for b in bars) else [])
    row_of = {name: i for i, name in enumerate(rows)}
    retried = set(status.as_dict()["retried_chunks"])
    span = max((b.end for b in bars), default=1.0)

    channels = [c for c in (status.report or {}).get("channels", []) if "peak_residual" in c]
    panels = 3 if channels else 2
    fig = Figure(figsize=(11, 6 + 3 * (panels - 2) + 0.35 * len(rows)))
    axes = fig.subplots(panels, 1, gridspec_kw={"height_ratios": [max(1, len(rows)), 3, 3][:panels]})
    axis, memory = axes[0], axes[1]
    # One collection per row and colour, not one artist per bar: 4096 one-channel tasks took 8.4 s of
    # CPU to draw bar by bar (matplotlib updates the axes' limits for every patch), 1.2 s so.
    queued = [[(b.submitted, row_of[b.row]), (b.start, row_of[b.row])] for b in bars if b.kind != "failed"]
    axis.add_collection(LineCollection(queued, colors="0.6", linewidths=1))
    spans: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for b in bars:
        color = "tab:red" if b.kind == "failed" else "tab:orange" if b.chunk in retried else \
            "tab:green" if b.step and not b.step.startswith("cycle") else "tab:blue"
        spans.setdefault((row_of[b.row], color), []).append((b.start, max(b.end - b.start, 0.002 * span)))
        if b.end - b.start > 0.03 * span:
            axis.text((b.start + b.end) / 2, row_of[b.row], str(b.chunk), ha="center", va="center", fontsize=7,
                      color="white")
    for (y, color), ranges in spans.items():
        axis.broken_barh(ranges, (y - 0.3, 0.6), facecolors=color, edgecolor="black", lw=0.4 if len(ranges) < 500 else 0)
    axis.set_xlim(0, span * 1.02)
    for c in status.chunks.values():  # running now (or when the driver died): a marker at submission
        if c.state == "running" and c.submitted_at:
            axis.plot([c.submitted_at - t0], [0], marker=">", color="tab:green")
    axis.set_ylim(len(rows) - 0.5, -0.5)
    axis.set_yticks(range(len(rows)), [f"worker {r}" if r in workers else r for r in rows])
    axis.set_xlabel("seconds since the first submission")
    d = status.as_dict()
    mode = status.mode
    progress = mode.progress_line(status.events)
    axis.set_title(f"{Path(str(d['imagename'])).name} ({mode.title}): {d['status']}, {d['done']}/{d['chunks']} chunks"
                   f" done, {d['failed_attempts']} failed attempts" + (f"\n{progress}" if progress else "")
                   + f"\n({mode.task_legend}, orange: retried chunk, grey: queued/set-up, red: failed)", fontsize=9)

    done = [c for c in status.chunks.values() if c.state == "done" and c.metrics]
    chunks = [c.index for c in done]
    peaks = [c.metrics["peak_rss_bytes"] / 2**30 for c in done]
    memory.vlines(chunks, 0, peaks, colors=["tab:orange" if c in retried else "tab:blue" for c in chunks],
                  linewidths=max(0.5, min(8.0, 400 / max(1, len(chunks)))))
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
    memory.set_ylim(bottom=0)
    if plans:
        memory.legend(fontsize=8, loc="center right")
    if channels:
        _channel_panel(axes[2], channels)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(path)
    return path


def _channel_panel(axis, channels: list[dict]) -> None:
    """Per output channel against frequency: the residual's peak and rms, and the iterations done."""
    mhz = [c["frequency_hz"] / 1e6 for c in channels]
    axis.plot(mhz, [c["peak_residual"] for c in channels], ".-", color="tab:red", label="peak residual")
    axis.plot(mhz, [c["rms_residual"] for c in channels], ".-", color="tab:blue", label="rms of the residual")
    axis.set_xlabel("frequency (MHz)")
    axis.set_ylabel("residual (image units)")
    axis.set_ylim(bottom=0)
    lines, labels = axis.get_legend_handles_labels()
    if any(c.get("iterations") for c in channels):
        twin = axis.twinx()
        twin.fill_between(mhz, [c.get("iterations", 0) for c in channels], step="mid", color="0.7", alpha=0.5,
                          label="iterations")
        twin.set_ylabel("iterations")
        axis.set_zorder(twin.get_zorder() + 1)
        axis.patch.set_visible(False)
        more, names = twin.get_legend_handles_labels()
        lines, labels = lines + more, labels + names
    axis.legend(lines, labels, fontsize=8, loc="upper right")
