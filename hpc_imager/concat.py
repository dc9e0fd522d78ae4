"""Assemble the chunks' parts into the final cubes.

Every product is concatenated along the spectral axis straight into a paged image in a staging
folder of the run directory (one copy of the pixels, the least a real cube needs), then all are
renamed into place together: a failed assembly leaves no half-made final products and deletes no
part. With ``restoringbeam='common'`` the chunks were restored per plane; the final ``.image`` is
restored again by tclean itself over the whole cube, so the common beam is the one serial tclean
would pick from all channels.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import psutil

from .channel_grid import Chunk
from .errors import RunFailed
from .imaging_task import part_path

# Everything tclean may make for a cube, in the order it is assembled.
PRODUCTS = ("psf", "pb", "sumwt", "weight", "residual", "model", "mask", "image", "image.pbcor")


class ConcatError(RunFailed):
    """The parts cannot be assembled; the message names what is missing."""


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def final_products(imagename: str) -> list[Path]:
    """The final products of ``imagename`` that exist now."""
    return [Path(f"{imagename}.{p}") for p in PRODUCTS if Path(f"{imagename}.{p}").exists()]


def wants_common_beam(tclean_params: dict) -> bool:
    beam = tclean_params.get("restoringbeam")
    return beam == "common" or beam == ["common"]


def assemble(run_dir: Path, chunks: list[Chunk], tclean_params: dict, tabular_axis: dict | None = None) -> dict:
    """Concatenate every product of every chunk into ``imagename.*``; return what it cost.

    ``tabular_axis``: the serial cube's spectral coordinate when it is tabular; imageconcat keeps
    only the first part's table of frequencies, so it is written back whole.
    """
    from casatools import image

    parts = [part_path(run_dir, c) for c in chunks]
    missing = [c for c, p in zip(chunks, parts) if not p.is_dir()]
    if missing:
        channels = ", ".join(f"{c.first}-{c.channels[-1]}" for c in missing)
        raise ConcatError(f"cannot assemble: parts missing for channels {channels} ({len(missing)} chunks)")
    imagename = tclean_params["imagename"]
    common_beam = wants_common_beam(tclean_params)
    products = [p for p in PRODUCTS if (parts[0] / f"part.{p}").is_dir()]
    if common_beam:
        products = [p for p in products if not p.startswith("image")]
    for product in products:
        absent = [c.name for c, part in zip(chunks, parts) if not (part / f"part.{product}").is_dir()]
        if absent:
            raise ConcatError(f"cannot assemble .{product}: missing from {', '.join(absent)}")

    staging = Path(run_dir) / "assembled"
    shutil.rmtree(staging, ignore_errors=True)  # a previous, interrupted assembly of ours
    staging.mkdir()
    staged_name = staging / Path(imagename).name
    io_before = psutil.Process().io_counters().write_bytes
    started = time.time()
    for product in products:
        ia = image()
        try:
            if len(parts) == 1:  # imageconcat wants two or more; one part is copied as it is
                ia.open(str(parts[0] / f"part.{product}"))
                out = ia.subimage(outfile=f"{staged_name}.{product}")
            else:
                out = ia.imageconcat(
                    outfile=f"{staged_name}.{product}",
                    infiles=[str(part / f"part.{product}") for part in parts],
                    axis=-1,  # the spectral axis
                    relax=False,
                    mode="paged",
                )
            if tabular_axis is not None:
                _set_spectral_axis(out, tabular_axis)
            out.done()
        except Exception as error:
            raise ConcatError(f"cannot assemble .{product}: {str(error).splitlines()[0]}") from None
        finally:
            ia.done()
    if common_beam:
        _restore_with_common_beam(str(staged_name), tclean_params)
    seconds = time.time() - started
    written = psutil.Process().io_counters().write_bytes - io_before

    made = [p for p in PRODUCTS if Path(f"{staged_name}.{p}").exists()]
    clashes = [f"{imagename}.{p}" for p in made if Path(f"{imagename}.{p}").exists()]
    if clashes:
        raise ConcatError(f"will not overwrite {', '.join(clashes)}; the assembled cubes wait in {staging}")
    for product in made:
        shutil.move(f"{staged_name}.{product}", f"{imagename}.{product}")
    staging.rmdir()
    return {
        "concat_seconds": seconds,
        "concat_bytes_written": written,
        "product_bytes": sum(_dir_bytes(Path(f"{imagename}.{p}")) for p in made),
        "products": made,
    }


def _set_spectral_axis(im, spectral: dict) -> None:
    record = im.coordsys().torecord()
    key = next(k for k in record if k.startswith("spectral"))
    record[key] = spectral
    im.setcoordsys(record)


def _restore_with_common_beam(staged_name: str, tclean_params: dict) -> None:
    """tclean in restore-only mode (no gridding, no cleaning) over the whole assembled cube."""
    from casatasks import tclean

    params = dict(tclean_params, imagename=staged_name, niter=0, calcres=False, calcpsf=False,
                  restoration=True, restart=True)
    with contextlib.chdir(Path(staged_name).parent):
        tclean(**params)
    if not Path(f"{staged_name}.image").is_dir():
        raise ConcatError("restoration with the common beam made no .image (see the CASA log)")
