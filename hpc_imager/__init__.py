"""hpc_imager: channel-parallel CASA tclean spectral cubes on HPC batch clusters."""

from .api import tclean

__all__ = ["tclean"]
