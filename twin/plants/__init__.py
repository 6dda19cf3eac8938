"""Independent plants the twin learns from and is proved against.

`twin.plants.indpensim` runs the IndPenSim industrial penicillin simulator (pensimpy) on a
project recipe; `twin.plants.history` makes operator histories and paired recipe comparisons;
`twin.plants.cli` is the `twin plant ...` command group. The embedded demo history (12 batches)
lives in `twin/demo_data/` (see its README.md).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["demo_history_dir", "default_recipe", "run_batch"]


def demo_history_dir() -> Path:
    """The folder of the embedded demo history: 12 IndPenSim batches in the `twin.data` format.

    Holds `measurements.*`, `batches.csv`, `provenance.json`, `recipes/<batch>.csv` and the
    noise-free `truth.*`; load it with `twin.data.load_batch_dir(demo_history_dir())`.
    """
    return Path(__file__).resolve().parent.parent / "demo_data"


def default_recipe():
    """The IndPenSim plant's default recipe (see `twin.plants.indpensim.default_recipe`)."""
    from .indpensim import default_recipe as _default

    return _default()


def run_batch(*args, **kwargs):
    """Run one IndPenSim batch (see `twin.plants.indpensim.run_batch`)."""
    from .indpensim import run_batch as _run

    return _run(*args, **kwargs)
