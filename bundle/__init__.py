"""gcbundle: run a whole Parsl workflow on an HPC login node through Globus Compute."""
from __future__ import annotations

__version__ = "0.1.0"
