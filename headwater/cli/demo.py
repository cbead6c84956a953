"""`headwater demo`: the whole flow on real data (headwater.demo)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option("--fast", is_flag=True, help="Smaller run, for tests")
@click.option("--output", type=click.Path(path_type=Path), default=Path("demo-output"),
              help="Where the demo writes its data and files")
def demo(fast: bool, output: Path) -> None:
    """The whole flow on real data: lineage, attribution, unlearning, the audit report."""
    from headwater.demo.run import run_demo

    run_demo(output, fast=fast)
