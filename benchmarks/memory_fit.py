"""Fitting the memory model's terms on measured peaks (benchmarks/memory_matrix.py refits them; the
installed package only uses the constants, hpc_imager/sizing/estimate.py's MEMORY_TERMS)."""

from __future__ import annotations

from hpc_imager.sizing.estimate import MEMORY_TERMS, TaskShape, phase_bytes, memory_phases, task_peak_bytes

FIT_FLOOR = 0.98
FIT_ROUNDS = 20


def _fit_phases(chosen: list[dict[str, float]], peaks) -> dict[str, float]:
    """Non-negative least squares of the terms on relative error, each row by its chosen phase."""
    import numpy as np
    from scipy.optimize import nnls

    names = list(MEMORY_TERMS)
    features = np.array([[quantities[n] for n in names] for quantities in chosen], dtype=float)
    used = features.any(axis=0)
    scale = np.where(used, features.max(axis=0), 1.0)
    solution, _ = nnls(features[:, used] / scale[used] / peaks[:, None], np.ones(len(peaks)))
    constants = dict.fromkeys(names, 0.0)
    for name, value in zip([n for n, u in zip(names, used) if u], solution / scale[used]):
        constants[name] = float(value)
    return constants


def fit_memory_terms(samples: list[tuple[TaskShape, float]]) -> dict[str, float]:
    """The terms fitted on every row weighing the same (relative error), then scaled so the lowest
    estimate/measured ratio is FIT_FLOOR: the target is 0.95…1.20 for every row, and a shared site's
    limit adds ``memory_headroom`` (1.25) on top of the estimate.

    A row's peak is its largest phase, which depends on the constants: each row starts from the
    phase MEMORY_TERMS picks, the terms are fitted on those phases, the phases picked again under
    the fit, until no row changes phase (at most FIT_ROUNDS rounds)."""
    import numpy as np

    peaks = np.array([p for _, p in samples], dtype=float)
    phases = [list(memory_phases(s).values()) for s, _ in samples]
    constants, chosen = dict(MEMORY_TERMS), None
    for _ in range(FIT_ROUNDS):
        picked = [max(p, key=lambda quantities: phase_bytes(quantities, constants)) for p in phases]
        if picked == chosen:
            break
        chosen = picked
        constants = _fit_phases(chosen, peaks)
    ratios = np.array([task_peak_bytes(s, constants) for s, _ in samples]) / peaks
    lift = FIT_FLOOR / ratios.min()
    return {name: value * lift for name, value in constants.items()}


def leave_one_out(samples: list[tuple[TaskShape, float]]) -> list[float]:
    """estimate/measured for each sample under terms fitted on all the others."""
    ratios = []
    for index, (shape, peak) in enumerate(samples):
        constants = fit_memory_terms(samples[:index] + samples[index + 1:])
        ratios.append(task_peak_bytes(shape, constants) / peak)
    return ratios
