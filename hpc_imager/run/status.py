"""What a run directory says about its run, running or finished: ``python -m hpc_imager status RUN_DIR``.

Read only from the durable record (run.json, journal.jsonl, report.json when the run has ended),
so it works from another shell, another node, or after the driver was killed. A chunk's state is
that of its latest attempt: submitted and not yet answered = running; its last answer a failure
and nothing after = failed (the driver may still retry it); done (its part final) = done; never
submitted = pending. In whole-cube iteration a chunk runs one task per step, so it is running from
its first step to its restore; the mode (run.json's "mode", :mod:`hpc_imager.run.modes`) adds its
own progress (cycles, iterations, peak residual).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from .journal import RunDirectoryError
from .modes import ImagingMode, mode_named


@dataclass
class ChunkState:
    index: int
    state: str = "pending"  # pending | running | failed | done
    attempts: int = 0
    submitted_at: float | None = None  # the latest attempt's
    answered_at: float | None = None
    metrics: dict | None = None
    errors: list[str] = field(default_factory=list)
    placed: bool = False  # copied into the final cube being assembled
    steps: list[dict] = field(default_factory=list)  # whole-cube iteration: each finished step's metrics


@dataclass
class RunStatus:
    run_dir: Path
    identity: dict
    report: dict | None
    chunks: dict[int, ChunkState]
    total_chunks: int
    first_event: float | None
    last_event: float | None
    driver: dict | None = None  # the last driver's pid and host (journal "driver" event)
    events: list[dict] = field(default_factory=list)

    @property
    def mode(self) -> type[ImagingMode]:
        return mode_named((self.report or {}).get("mode") or self.identity.get("mode"))

    def count(self, state: str) -> int:
        return sum(1 for c in self.chunks.values() if c.state == state) + (
            self.total_chunks - len(self.chunks) if state == "pending" else 0)

    @property
    def finished(self) -> bool:
        return self.report is not None and self.report.get("status") in ("complete", "incomplete")

    def workers(self) -> list[str]:
        """Every worker that has finished a task (a whole chunk, or a chunk's step)."""
        finished = [c.metrics for c in self.chunks.values() if c.metrics] + [
            step for c in self.chunks.values() for step in c.steps]
        return sorted({str(m["worker"]) for m in finished if m.get("worker")})

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Time left: chunks not done × the mean task time of finished chunks / tasks running at once.

        Tasks at once = the plan's workers when run.json or report.json names them, else the
        distinct workers that have finished chunks (a lower bound, so the estimate errs long)."""
        done = [c.metrics["wall_seconds"] for c in self.chunks.values() if c.state == "done" and c.metrics]
        left = self.total_chunks - len(done)
        if self.finished or left == 0:
            return 0.0
        if not done or not self.mode.eta_known:
            return None
        # workers shared with other cubes of the submission: this cube's share, as if they all still ran
        parallel = (self.planned_workers() or max(1, len(self.workers()))) / (1 + len(self.shared_with()))
        mean = sum(done) / len(done)
        now = now or time.time()
        # the running chunks are partly done already
        running_elapsed = sum(min(now - c.submitted_at, mean) for c in self.chunks.values()
                              if c.state == "running" and c.submitted_at)
        return max(0.0, (left * mean - running_elapsed) / parallel)

    def _unfinished_state(self) -> str:
        """No report.json yet: imaging, assembling (every chunk done: the last parts being placed and
        renamed), or stopped (nothing in flight: the driver was killed; --resume goes on)."""
        alive = self._driver_alive()
        if alive is False:
            return "stopped"
        if self.count("running"):
            return "running"
        if self.count("done") == self.total_chunks:
            return "assembling"
        return "running" if alive else "stopped"

    def _driver_alive(self) -> bool | None:
        """Whether the driver lives: between passes (after the probe, before more memory) nothing is
        in flight, and a killed driver leaves tasks that look in flight. It can be asked only on its
        own host (None elsewhere)."""
        if not self.driver or self.driver.get("host") != socket.gethostname():
            return None
        try:
            os.kill(int(self.driver["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # someone else's process of that number: alive, but maybe not ours
        return True

    def planned(self, what: str) -> int | None:
        """The plan's ``workers`` or ``jobs`` (report.json's when the run has ended, else run.json's)."""
        for source in (self.report or {}, self.identity):
            plan = source.get("plan") or {}
            if plan.get(what):
                return int(plan[what])
        return None

    def planned_workers(self) -> int | None:
        return self.planned("workers")

    def shared_with(self) -> list[str]:
        """The run directories of the other cubes submitted with this one, on the same workers."""
        return (self.identity.get("plan") or {}).get("shared_with", [])

    def as_dict(self) -> dict:
        eta = self.eta_seconds()
        return {
            "run_dir": str(self.run_dir),
            "imagename": self.identity.get("imagename"),
            "mode": self.mode.key,
            "status": (self.report or {}).get("status", self._unfinished_state()),
            "chunks": self.total_chunks,
            **{state: self.count(state) for state in ("done", "running", "failed", "pending")},
            "failed_attempts": sum(len(c.errors) for c in self.chunks.values()),
            "retried_chunks": sorted(c.index for c in self.chunks.values() if c.errors),
            "placed": sum(c.placed for c in self.chunks.values()),
            "assembly": self.identity.get("assembly", "placed"),  # virtual: nothing is placed until the end
            "workers_seen": self.workers(),
            "planned_workers": self.planned_workers(),
            "planned_jobs": self.planned("jobs"),
            "shared_with": self.shared_with(),
            "elapsed_seconds": (self.last_event - self.first_event) if self.first_event else 0.0,
            "eta_seconds": eta,
            "progress": self.mode.progress(self.events),
        }


def journal_events(journal: Path) -> list[dict]:
    """Every complete line of a journal.jsonl (one being written right now is skipped)."""
    if not journal.exists():
        return []
    events = []
    for line in journal.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a torn last line, or one being written right now
    return events


def read_status(run_dir: Path) -> RunStatus:
    """The run's status from its files; RunDirectoryError when RUN_DIR holds no run."""
    run_dir = Path(run_dir)
    identity_path = run_dir / "run.json"
    if not identity_path.exists():
        raise RunDirectoryError(f"{run_dir} holds no run (no run.json)")
    identity = json.loads(identity_path.read_text())
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    events = journal_events(run_dir / "journal.jsonl")
    chunks: dict[int, ChunkState] = {}
    driver = None
    for event in events:
        if event["event"] == "driver":
            driver = event
        if "chunk" not in event:  # the driver's own events, whole-cube iteration steps
            continue
        chunk = chunks.setdefault(event["chunk"], ChunkState(event["chunk"]))
        if event["event"] == "submitted":
            chunk.attempts = max(chunk.attempts, event["attempt"])
            if chunk.state != "done":
                chunk.state, chunk.submitted_at, chunk.answered_at = "running", event["time"], None
        elif event["event"] == "done":
            chunk.state, chunk.answered_at, chunk.metrics = "done", event["time"], event["metrics"]
        elif event["event"] == "step done":
            chunk.steps.append(dict(event["metrics"], step=event["step"], attempt=event["attempt"], time=event["time"]))
        elif event["event"] == "placed":
            chunk.placed = True
        elif event["event"] == "failed":
            chunk.errors.append(event["error"])
            if chunk.state != "done" and event["attempt"] == chunk.attempts:
                chunk.state, chunk.answered_at = "failed", event["time"]
    if report and report.get("chunks"):
        total = int(report["chunks"])
    else:
        total = math.ceil(identity["nchan"] / identity["channels_per_task"])
    times = [e["time"] for e in events if "time" in e]
    return RunStatus(run_dir, identity, report, chunks, total, min(times, default=None), max(times, default=None),
                     driver, events)


def _duration(seconds: float | None, why_unknown: str = "no chunk finished yet") -> str:
    if seconds is None:
        return f"unknown ({why_unknown})"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _assembled(d: dict, finished: bool) -> str:
    if d["assembly"] != "virtual":
        return f"{d['placed']} placed in the cube"
    return ("the cube is CASA's virtual concatenation of the parts, which it reads" if finished
            else "the parts become one virtual cube after the last chunk (nothing is copied)")


def format_status(status: RunStatus) -> str:
    d = status.as_dict()
    lines = [
        f"run {d['run_dir']} ({d['imagename']}): {d['status']}",
        f"chunks {d['chunks']}: {d['done']} done, {d['running']} running (or waiting on a worker), {d['failed']} failed,"
        f" {d['pending']} pending ({d['failed_attempts']} failed attempts in all); " + _assembled(d, status.finished),
        f"workers: {d['planned_workers'] or '?'} planned in {d['planned_jobs'] or '?'} job(s),"
        f" {len(d['workers_seen'])} have finished tasks"
        f" ({', '.join(d['workers_seen']) or 'none yet'})"
        + (f"; shared with {', '.join(d['shared_with'])}" if d["shared_with"] else ""),
        f"elapsed {_duration(d['elapsed_seconds'])}; "
        + ("finished" if status.finished else "time left about " + _duration(
            d["eta_seconds"], "no chunk finished yet" if status.mode.eta_known else "the cleaning decides its cycles")),
    ]
    progress = status.mode.progress_line(status.events)
    if progress:
        lines.insert(1, progress)
    for chunk in sorted(status.chunks.values(), key=lambda c: c.index):
        if chunk.state == "failed" or (chunk.errors and chunk.state != "done"):
            lines.append(f"  chunk {chunk.index} failed (attempt {chunk.attempts}): {chunk.errors[-1]}")
    return "\n".join(lines)
