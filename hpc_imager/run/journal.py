"""The run directory's durable record: which cube it is for and what became of each chunk.

``run.json`` is written once and names the cube (its fingerprint); ``journal.jsonl`` is appended
to, one JSON line per event, so a driver killed at any instant leaves a journal that says exactly
which chunks were done (and which parts were placed into the final cube). A torn last line (killed
mid-write) is ignored. Outcomes (done, failed, placed) are fsync'd before the driver acts on them;
a submission is only flushed: losing one in a machine crash costs nothing but its attempt number,
and an fsync costs 8-20 ms on this project's shared disk, the largest part of the driver's cost per
task (measured with benchmarks/driver_overhead.py).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


class RunDirectoryError(UserError):
    """The run directory does not fit what was asked (exists, missing, or from another cube)."""


@dataclass
class ChunkRecord:
    attempts: int = 0
    done: dict | None = None  # the metrics of the attempt that finished it
    placed: bool = False  # its part is copied into the staged final products (concat.CubeAssembly)


class Journal:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "journal.jsonl"
        self.identity_path = self.run_dir / "run.json"
        self.records: dict[int, ChunkRecord] = {}
        self.iteration_steps: list[dict] = []  # whole-cube iteration: each step every chunk finished

    @staticmethod
    def refuse_taken(run_dir: Path) -> None:
        """Refuse a run directory that holds a run (before anything of a submission is written)."""
        if (Path(run_dir) / "run.json").exists():
            raise RunDirectoryError(f"run directory {run_dir} holds a run: pass --resume to continue it")

    @classmethod
    def create(cls, run_dir: Path, identity: dict) -> "Journal":
        journal = cls(run_dir)
        cls.refuse_taken(run_dir)
        journal.run_dir.mkdir(parents=True, exist_ok=True)  # `plan` may have made its logs/jobs folder
        _write_durably(journal.identity_path, json.dumps(identity, indent=2))
        return journal

    @classmethod
    def resume(cls, run_dir: Path, identity: dict) -> "Journal":
        journal = cls(run_dir)
        if not journal.identity_path.exists():
            raise RunDirectoryError(f"nothing to resume: {run_dir} holds no run")
        stored = json.loads(journal.identity_path.read_text())
        if stored.get("fingerprint") != identity["fingerprint"]:
            raise RunDirectoryError(
                f"{run_dir} was made from a different cube.toml (fingerprint {stored.get('fingerprint')},"
                f" this one {identity['fingerprint']}): use another run directory"
            )
        journal._replay()
        return journal

    def _replay(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn final line from a killed driver
            self._apply(event)

    def _apply(self, event: dict) -> None:
        if event["event"] == "iteration step":
            self.iteration_steps.append(event["step"])
            return
        if event["event"] in ("driver", "step done"):
            return
        record = self.records.setdefault(event["chunk"], ChunkRecord())
        if event["event"] == "submitted":
            record.attempts = max(record.attempts, event["attempt"])
        elif event["event"] == "done":
            record.done = event["metrics"]
        elif event["event"] == "placed":
            record.placed = True

    def _append(self, event: dict, durable: bool = True) -> None:
        event = dict(event, time=time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
            f.flush()
            if durable:
                os.fsync(f.fileno())
        self._apply(event)

    def record(self, chunk: int) -> ChunkRecord:
        return self.records.get(chunk, ChunkRecord())

    def submitted(self, chunk: int, attempt: int, step: str | None = None) -> None:
        """A task sent to the workers; ``step``: the step of whole-cube iteration it runs (None: the whole chunk)."""
        self._append(_with_step({"chunk": chunk, "event": "submitted", "attempt": attempt}, step), durable=False)

    def done(self, chunk: int, metrics: dict) -> None:
        """The chunk's part is final (in parts/), made by the attempt ``metrics["attempt"]``."""
        self._append({"chunk": chunk, "event": "done", "attempt": metrics["attempt"], "metrics": metrics})

    def step_done(self, chunk: int, attempt: int, step: str, metrics: dict) -> None:
        """A step of whole-cube iteration finished in a chunk: for ``status`` and report.png only (what
        resumes a run is the ``iteration step`` every chunk finished), so it is flushed, not fsync'd."""
        self._append({"chunk": chunk, "event": "step done", "attempt": attempt, "step": step, "metrics": metrics},
                     durable=False)

    def placed(self, chunk: int) -> None:
        self._append({"chunk": chunk, "event": "placed"})

    def failed(self, chunk: int, attempt: int, error: str, step: str | None = None) -> None:
        self._append(_with_step({"chunk": chunk, "event": "failed", "attempt": attempt, "error": error}, step))

    def driver_started(self) -> None:
        """Which process drives the run now, so ``status`` can tell a run between passes (probe,
        more memory, a new cluster: nothing in flight) from one whose driver was killed."""
        self._append({"event": "driver", "pid": os.getpid(), "host": socket.gethostname()})

    def iteration_step(self, step: dict) -> None:
        """A step of whole-cube iteration that every chunk finished, with what the controller merged."""
        self._append({"event": "iteration step", "step": step})


def _with_step(event: dict, step: str | None) -> dict:
    return event if step is None else dict(event, step=step)


def _write_durably(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
