"""The mosaic gridder's primary-beam frequencies per plane, chunk against whole cube (pure logic; the
measured cubes are in test_local_engine.py)."""

from __future__ import annotations

from hpc_imager.imaging.mosaic_beams import (beams, equal_chunk_size, plane_beams, plane_data_channels,
                                             planes_off_serial, window)

MHZ = 1e6
WIDE = [1400 * MHZ + i * MHZ for i in range(24)]  # the simulated 24 × 1 MHz mosaic's window
NARROW = [1400 * MHZ + i * 0.1 * MHZ for i in range(6)]  # 6 × 100 kHz, inside one 0.5 % step


def chunked(nchan: int, size: int) -> list[tuple[int, int]]:
    return [(first, min(size, nchan - first)) for first in range(0, nchan, size)]


def test_the_whole_wide_cube_gets_three_beams_on_the_steps_from_the_top_channel():
    grid, chosen = beams(window(WIDE), WIDE)
    step = 1423 * MHZ * 0.005
    assert grid == [1423 * MHZ - 3 * step, 1423 * MHZ - 2 * step, 1423 * MHZ - step]  # not the top itself
    assert chosen == [0] * 6 + [1] * 7 + [2] * 11  # 1420-1423 MHz take the nearest, the highest


def test_wide_chunks_are_off_serial_where_measured():
    """Measured at 96², niter 0 (docs/correctness.md): chunks of 12 put planes 0-12 off serial and
    13-23 bit-identical. Chunks of 6 put all 24 off: the rule finds 0-17, not chunk 18-23's (its
    planes 18-22 weigh 0.997-1.000 of serial's, 23 0.98-1.00), so it is a lower bound."""
    planes = plane_data_channels(WIDE, [f - 0.13 * MHZ for f in WIDE])  # the image's LSRK channel centres
    assert planes_off_serial(window(WIDE), planes, chunked(24, 12)) == list(range(13))
    assert planes_off_serial(window(WIDE), planes, chunked(24, 6)) == list(range(18))  # measured: 0-23
    assert equal_chunk_size(window(WIDE), planes, 1) is None
    assert planes_off_serial(window(WIDE), planes, chunked(24, 24)) == []


def test_a_cube_inside_one_step_is_serial_in_chunks_of_three_not_two():
    """The helper study of 2026-12-01: 6 × 100 kHz in chunks of 3 equal serial, of 2 or 1 differ (an
    image of at most one data channel more than its beams gets one beam per channel)."""
    planes = plane_data_channels(NARROW, NARROW)
    assert plane_beams(window(NARROW), planes) == [(1400.5 * MHZ - 1400.5 * MHZ * 0.005,) * 2] * 6
    assert planes_off_serial(window(NARROW), planes, chunked(6, 3)) == []
    assert planes_off_serial(window(NARROW), planes, chunked(6, 2)) == list(range(6))
    assert equal_chunk_size(window(NARROW), planes, 1) == 3
