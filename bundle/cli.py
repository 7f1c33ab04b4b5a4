from __future__ import annotations

import click

from bundle import __version__


@click.group()
@click.version_option(__version__, prog_name="gcbundle")
def main() -> None:
    """gcbundle: ship a Parsl workflow to an HPC login node and bring its results back."""
