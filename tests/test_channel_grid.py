"""The channel grid: CASA's resolution of every way to write it, and its split into chunks."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpc_imager.imaging.channel_grid import ChannelGrid, resolve_grid
from hpc_imager.inputs.cube_spec import parse_cube_spec


def test_chunks_cover_every_channel_once_and_the_last_may_be_short():
    grid = ChannelGrid(nchan=10, kind="channel", start=5, width=2, unit="", frame="LSRK")
    chunks = grid.chunks(4)
    assert [(c.first, c.nchan) for c in chunks] == [(0, 4), (4, 4), (8, 2)]
    assert [c.start for c in chunks] == [5, 13, 21]  # data channel of each chunk's first output channel
    assert all(c.width == 2 and c.guard == 0 for c in chunks)
    assert [c.tclean_overrides() for c in chunks][-1] == {"start": 21, "width": 2, "nchan": 2}


def test_frequency_and_velocity_chunks_keep_the_users_units_and_guard_single_channels():
    freq = ChannelGrid(nchan=5, kind="frequency", start=1.4131e9, width=48828.125, unit="Hz", frame="LSRK")
    chunks = freq.chunks(2)
    assert [c.start for c in chunks] == ["1413100000.0Hz", "1413197656.25Hz", "1413295312.5Hz"]
    assert chunks[-1].nchan == 1 and chunks[-1].guard == 1
    assert chunks[-1].tclean_overrides()["nchan"] == 2
    vel = ChannelGrid(nchan=3, kind="velocity", start=1550.0, width=-10.0, unit="km/s", frame="LSRK")
    assert [c.start for c in vel.chunks(1)] == ["1550.0km/s", "1540.0km/s", "1530.0km/s"]
    assert ChannelGrid(3, "channel", 0, 1, "", "LSRK").chunks(1)[0].guard == 0


def test_a_single_channel_is_guarded_only_where_output_channels_are_not_one_data_channel_each():
    step = 24414.0625
    data = tuple(1.4e9 + i * step for i in range(12))

    def grid(frequencies, width):
        return ChannelGrid(len(frequencies), "frequency", frequencies[0], width, "Hz", "LSRK",
                           frequencies=frequencies, data_frequencies=data)

    assert [c.guard for c in grid(data[2:7], step).chunks(2)] == [0, 0, 0]  # one data channel each
    assert [c.guard for c in grid(data[2:8:2], 2 * step).chunks(2)] == [0, 1]  # two data channels' width
    assert [c.guard for c in grid(tuple(f + step / 2 for f in data[2:7]), step).chunks(2)] == [0, 0, 1]  # between
    assert grid(data[2:8:2], 2 * step).chunks(1)[0].guard == 1
    assert grid(data[2:3], 2 * step).chunks(1)[0].guard == 0  # a one-channel cube is serial's own
    unknown = ChannelGrid(3, "frequency", data[0], step, "Hz", "LSRK", frequencies=data[:3])  # no preflight
    assert unknown.chunks(2)[-1].guard == 1


@pytest.mark.casa
@pytest.mark.parametrize("keywords, nchan, kind", [
    ({"nchan": -1}, 63, "frequency"),
    ({"start": 5, "width": 2, "nchan": -1}, 29, "channel"),
    ({"start": "1.4131GHz", "width": "", "nchan": -1}, 45, "frequency"),
    ({"start": "1550km/s", "width": "-10.3km/s", "nchan": 10, "restfreq": ["1420.405752MHz"]}, 10, "velocity"),
])
def test_resolve_grid_asks_casa(keywords, nchan, kind, ngc5921_ms):
    spec = parse_cube_spec({"tclean": dict(vis=str(ngc5921_ms), imagename="x", field="2", imsize=[64, 64],
                                           cell=["15arcsec"], **keywords)}, Path("/"))
    grid = resolve_grid(spec.tclean)
    assert (grid.nchan, grid.kind, grid.frame) == (nchan, kind, "LSRK")
    if kind == "frequency" and keywords.get("start"):
        assert grid.start == 1.4131e9 and grid.width == pytest.approx(24414.0625)
