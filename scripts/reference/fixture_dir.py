"""Output folders of the golden scripts: only ever wipe an earlier run's output."""

import shutil
import sys
from pathlib import Path


def prepare_out_dir(out: Path, *markers: str) -> bool:
    """Empty ``out`` (creating it) when it is absent, empty or holds one of ``markers`` (names
    an earlier run writes); otherwise print why and return False without touching it."""
    if out.exists() and any(out.iterdir()):
        if not any((out / m).exists() for m in markers):
            print(f"error: {out} is not empty and does not look like a previous "
                  f"fixture directory; refusing to delete it", file=sys.stderr)
            return False
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return True
