"""Check a cube the way tclean would, before any worker starts: every mistake is one line naming the keyword.

Without this, a vis that is not a MeasurementSet, a field that selects nothing or a cell that is not
an angle surface as a CASA traceback from inside a worker, once per chunk and per retry; channels
past the end of the data surface nowhere at all (tclean pads them with blank planes). The checks
ask CASA's own parsers (msseltoindex, msselect, quanta, measures) and CASA's imager for the grid
(:func:`hpc_imager.imaging.channel_grid.resolve_grid`, no gridding; the whole check took 0.2-0.5 s on NGC5921 once casatools is
loaded), and hand that grid on so the driver does not ask CASA again.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import os
import warnings
from pathlib import Path

from ..imaging.channel_grid import ChannelGrid, channel_frequencies, resolve_grid, spectral_axis
from ..logs import casa_messages_to
from .cube_spec import CubeSpec, CubeSpecError, TcleanParams

# tclean's selection keywords → (ms.msseltoindex's argument, ms.msselect's key). msseltoindex parses
# an expression and says what is wrong with it; msselect says whether it selects any rows.
SELECTIONS = {
    "field": ("field", "field"),
    "spw": ("spw", "spw"),
    "timerange": ("time", "time"),
    "uvrange": ("uvrange", "uvdist"),
    "antenna": ("baseline", "baseline"),
    "scan": ("scan", "scan"),
    "observation": ("observation", "observation"),
    "intent": (None, "scanintent"),  # msseltoindex has no intent argument
}


def casa_message(error: BaseException) -> str:
    """CASA's own message, first line, without the log prefix CASA puts on it
    (``2026-11-23 16:50:48<TAB>SEVERE<TAB>Origin (file ..., line 595)<TAB>message``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    return first.rsplit("\t", 1)[-1].strip()


def check_cube(spec: CubeSpec) -> ChannelGrid:
    """Raise :class:`CubeSpecError` for the first thing tclean would reject; return the cube's channel grid."""
    from casatasks import casalog

    # CASA writes SEVERE lines to stderr whatever casalog.showconsole says (measured: four for
    # qa.quantity('15arcsex')): the user gets our one line, CASA's go to its log.
    with casa_messages_to(Path(casalog.logfile())):
        return _check(spec)


def _check(spec: CubeSpec) -> ChannelGrid:
    tclean = spec.tclean
    _check_values(tclean.model_dump())
    vis = _as_list(tclean.vis)
    for path in vis:
        _check_vis(path)
    _check_imsize(tclean.imsize)
    _check_cell(tclean.cell)
    _check_phasecenter(tclean.phasecenter, vis[0])
    if tclean.selectdata:
        _check_selection(tclean, vis)
    grid = _resolve(tclean)
    if grid.frequencies:
        # The data's channels are what tclean images with nchan=-1 and the default start and width:
        # the selected channels in the cube's own frame, from the same CASA code that makes the grid.
        data_axis, data_nchan = spectral_axis(tclean.model_copy(update={"start": "", "width": "", "nchan": -1}))
        grid = dataclasses.replace(grid, data_frequencies=channel_frequencies(data_axis, data_nchan))
        if not spec.run.allow_blank_channels:
            _check_start_within_data(tclean, grid, vis[0], data_axis)
            _check_channels_within_data(tclean, grid, grid.data_frequencies)
    return grid


@functools.cache
def tclean_value_rules() -> dict[str, dict]:
    """tclean's own allowed values and ranges per keyword (``weighting``, ``gridder``, ``robust`` ...),
    read from the schema its task wrapper validates with (casatasks/tclean.py), so they are the
    installed tclean's and never a copy that drifts. The schema is a literal inside ``__call__``."""
    source = Path(importlib.util.find_spec("casatasks.tclean").origin).read_text()
    with warnings.catch_warnings():  # its docstring's "\*" is an invalid escape to a parser
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.11
        warnings.simplefilter("ignore", SyntaxWarning)  # 3.12 (CASA 6.7.5.18): a line on the user's terminal
        tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "schema":
            rules = {}
            for key, value in zip(node.value.keys, node.value.values):
                entry = {k.value: v for k, v in zip(value.keys, value.values) if isinstance(k, ast.Constant)}
                rule = {name: ast.literal_eval(entry[name]) for name in ("allowed", "min", "max") if name in entry}
                if rule:
                    rules[key.value] = rule
            return rules
    raise RuntimeError("casatasks/tclean.py has no schema: hpc_imager cannot check tclean's values")


def _check_values(params: dict) -> None:
    """A value tclean's own schema refuses (tclean itself would stop before imaging)."""
    for name, rule in tclean_value_rules().items():
        value = params.get(name)
        if "allowed" in rule and value not in rule["allowed"]:
            raise CubeSpecError(f"{name}: {value!r} is not one of tclean's values: {', '.join(sorted(rule['allowed']))}")
        if "min" in rule and value < rule["min"] or "max" in rule and value > rule["max"]:
            raise CubeSpecError(f"{name}: {value!r} is outside tclean's range {rule.get('min')} to {rule.get('max')}")


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _check_vis(path: str) -> None:
    from casatools import table

    where = Path(path)
    if not where.exists():
        raise CubeSpecError(f"vis: {path}: no such MeasurementSet")
    if not where.is_dir() or not (where / "table.dat").is_file():
        raise CubeSpecError(f"vis: {path} is not a MeasurementSet (not a CASA table directory)")
    unreadable = [p for p in (where, where / "table.dat") if not os.access(p, os.R_OK | (os.X_OK if p.is_dir() else 0))]
    if unreadable:
        raise CubeSpecError(f"vis: {path} is not readable (permission denied on {unreadable[0]})")
    tb = table()
    try:
        tb.open(path)
        kind = tb.info().get("type", "")
    except Exception as error:
        raise CubeSpecError(f"vis: {path} cannot be opened: {casa_message(error)}") from None
    finally:
        tb.done()
    if kind != "Measurement Set":
        raise CubeSpecError(f"vis: {path} is a CASA table of type {kind or 'unknown'!r}, not a MeasurementSet")


def _check_imsize(imsize) -> None:
    sizes = _as_list(imsize)
    if not 1 <= len(sizes) <= 2:
        raise CubeSpecError(f"imsize: give one or two sizes in pixels, got {imsize!r}")
    if any(n < 1 for n in sizes):
        raise CubeSpecError(f"imsize: image sizes must be positive numbers of pixels, got {imsize!r}")


def _check_cell(cell) -> None:
    """tclean takes one or two angles ('15arcsec'), or numbers meaning arcseconds."""
    from casatools import quanta

    qa = quanta()
    cells = _as_list(cell)
    if not 1 <= len(cells) <= 2:
        raise CubeSpecError(f"cell: give one or two cell sizes like '15arcsec', got {cell!r}")
    for value in cells:
        if isinstance(value, str):
            try:
                quantity = qa.quantity(value)
            except Exception:
                raise CubeSpecError(f"cell: {value!r} is not an angle like '15arcsec'") from None
            if not quantity["unit"] or not qa.compare(quantity, qa.quantity("1arcsec")):
                raise CubeSpecError(f"cell: {value!r} is not an angle like '15arcsec'")
            size = quantity["value"]
        else:
            size = value
        if size <= 0:
            raise CubeSpecError(f"cell: cell sizes must be positive, got {value!r}")


def _check_phasecenter(phasecenter, first_vis: str) -> None:
    """A field id of the MS, or a direction ``[frame] longitude latitude``, or a moving source
    (a solar-system body, TRACKFIELD or an ephemeris table), as tclean reads it."""
    from casatools import measures, msmetadata

    if phasecenter == "":
        return
    if isinstance(phasecenter, int) or phasecenter.strip().isdigit():
        md = msmetadata()
        md.open(first_vis)
        try:
            fields = md.nfields()
        finally:
            md.done()
        if not 0 <= int(phasecenter) < fields:
            raise CubeSpecError(f"phasecenter: field {phasecenter} is not in {first_vis} (fields 0-{fields - 1})")
        return
    me = measures()
    codes = me.listcodes(me.direction())
    frames = set(codes["normal"]) | set(codes["extra"])
    words = phasecenter.split()
    if len(words) == 1 and (words[0].upper() in set(codes["extra"]) | {"TRACKFIELD"} or Path(words[0]).is_dir()):
        return
    if len(words) == 3 and words[0].upper() not in frames:
        raise CubeSpecError(f"phasecenter: unknown direction frame {words[0]!r} in {phasecenter!r}")
    if len(words) in (2, 3) and me.direction(*([] if len(words) == 3 else ["J2000"]), *words):
        return
    raise CubeSpecError(f"phasecenter: {phasecenter!r} is not a field id or a direction like "
                        "'J2000 19:59:28.500 +40.44.01.50'")


def _selection_for(value, index: int):
    """The selection for the ``index``-th vis: tclean takes one value for all, or one per vis."""
    if isinstance(value, list):
        return value[index] if len(value) > 1 else (value[0] if value else "")
    return value


def _check_selection(tclean: TcleanParams, vis: list[str]) -> None:
    """Each keyword parses and selects rows of its vis, and so do they all together."""
    from casatools import ms

    tool = ms()
    for index, path in enumerate(vis):
        chosen = {}
        for keyword, (argument, key) in SELECTIONS.items():
            value = _selection_for(getattr(tclean, keyword), index)
            if value == "" or value is None:
                continue
            value = str(value)
            if argument:
                try:
                    tool.msseltoindex(vis=path, **{argument: value})
                except Exception as error:
                    raise CubeSpecError(f"{keyword}={value!r}: {casa_message(error)}") from None
            if not _selects_rows(tool, path, {key: value}):
                raise CubeSpecError(f"{keyword}={value!r} selects no data in {path}")
            chosen[keyword] = (key, value)
        if len(chosen) > 1 and not _selects_rows(tool, path, dict(chosen.values())):
            together = ", ".join(f"{k}={v!r}" for k, (_, v) in chosen.items())
            raise CubeSpecError(f"{together}: each selects data in {path} but together they select none")


def _selects_rows(tool, path: str, selection: dict) -> bool:
    tool.open(path)
    try:
        return bool(tool.msselect(selection))
    except Exception:
        return False
    finally:
        tool.close()


# CASA's imager rejects some keywords only when it builds the image (defineimage); its message says which.
_KEYWORD_IN_CASA_MESSAGE = (("MDirection", "phasecenter"), ("cellsize", "cell"), ("Image shape", "imsize"))


def _resolve(tclean: TcleanParams) -> ChannelGrid:
    try:
        return resolve_grid(tclean)
    except Exception as error:
        message = casa_message(error)
        whole = str(error)
        keyword = next((k for sign, k in _KEYWORD_IN_CASA_MESSAGE if sign in whole), None)
        raise CubeSpecError(f"{keyword or 'tclean'}: CASA rejects the cube: {message}") from None


def _check_start_within_data(tclean: TcleanParams, grid: ChannelGrid, first_vis: str, data_axis: dict) -> None:
    """A start outside the data is silently moved by CASA (measured on NGC5921: start=80 of 63
    channels, start='1.3GHz' and start='3000km/s' all begin the cube inside the data, start='1.5GHz'
    one channel past its end), so the cube would not be the one asked for."""
    from casatools import msmetadata, quanta

    qa = quanta()
    if grid.kind == "channel" and isinstance(tclean.start, int):
        md = msmetadata()
        md.open(first_vis)
        try:
            spws = _selected_spws(tclean, first_vis) or range(md.nspw())
            channels = max(md.nchan(spw) for spw in spws)
        finally:
            md.done()
        if not 0 <= tclean.start < channels:
            raise CubeSpecError(f"start={tclean.start}: the selected data have channels 0-{channels - 1}; CASA would "
                                "silently start the cube elsewhere")
        return
    if grid.kind == "frequency" and isinstance(tclean.start, str) and tclean.start:
        asked = qa.convert(qa.quantity(tclean.start), "Hz")["value"]
    elif grid.kind == "velocity" and _rest_frequency(tclean, data_axis):
        rest, c = _rest_frequency(tclean, data_axis), qa.constants("c")["value"] / 1e3  # km/s
        v = qa.convert(qa.quantity(tclean.start), "km/s")["value"]
        asked = rest / (1 + v / c) if tclean.veltype.lower() == "optical" else rest * (1 - v / c)
    else:
        return
    step = abs(grid.frequencies[1] - grid.frequencies[0]) if len(grid.frequencies) > 1 else 0.0
    if abs(asked - grid.frequencies[0]) > max(step / 2, 1e-9 * asked):
        raise CubeSpecError(f"start={tclean.start!r} lies outside the selected data: CASA would silently start the "
                            f"cube at {grid.frequencies[0] / 1e9:.6f} GHz {grid.frame} instead")


def _rest_frequency(tclean: TcleanParams, data_axis: dict) -> float:
    """The rest frequency (Hz) velocities refer to: tclean's restfreq, else the data's."""
    from casatools import quanta

    given = tclean.restfreq[0] if isinstance(tclean.restfreq, list) and tclean.restfreq else tclean.restfreq
    if given:
        return quanta().convert(quanta().quantity(given), "Hz")["value"]
    return float(data_axis.get("restfreq", 0.0))


def _selected_spws(tclean: TcleanParams, path: str) -> list[int]:
    from casatools import ms

    spw = _selection_for(tclean.spw, 0)
    return [int(i) for i in ms().msseltoindex(vis=path, spw=str(spw))["spw"]] if spw else []


def _check_channels_within_data(tclean: TcleanParams, grid: ChannelGrid, data: tuple[float, ...]) -> None:
    """Output channels whose centre lies outside the selected data (``data``: its channels' centre
    frequencies in the cube's frame) would be blank planes. Channels below a channel selection
    (``spw='0:10~20'`` with ``start=5``) and past the end are caught here; a start outside the whole
    window, which CASA moves silently, by :func:`_check_start_within_data`."""
    half_channel = abs(data[1] - data[0]) / 2 if len(data) > 1 else 0.0
    low, high = min(data) - half_channel, max(data) + half_channel
    slack = 1e-6 * max(half_channel, 1.0)
    outside = [i for i, f in enumerate(grid.frequencies) if not low - slack <= f <= high + slack]
    if not outside:
        return
    raise CubeSpecError(
        f"start={tclean.start!r}, width={tclean.width!r}, nchan={tclean.nchan}: output channel(s) {_ranges(outside)} "
        f"of {grid.nchan} lie outside the selected data ({len(data)} channels, {low / 1e9:.6f}-{high / 1e9:.6f} GHz "
        f"{grid.frame}) and tclean would make them blank planes; change start/nchan, or set "
        f"[run] allow_blank_channels = true to image them anyway"
    )


def _ranges(indices: list[int]) -> str:
    spans: list[list[int]] = []
    for i in indices:
        if spans and spans[-1][1] == i - 1:
            spans[-1][1] = i
        else:
            spans.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)
