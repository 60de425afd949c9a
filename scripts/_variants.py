"""What the lever studies (glo_levers.py, imle_study.py) share: variants given as
NAME:key=value;key=value, and a Markdown table printed and appended to an --out file."""
from __future__ import annotations

from typing import Optional


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """'lr3x:imle.lr=0.003;imle.batch_size=256' -> ('lr3x', ['imle.lr=0.003', 'imle.batch_size=256'])."""
    name, _, over = spec.partition(":")
    return name, [o for o in over.split(";") if o]


def emit(lines: list[str], out: Optional[str]) -> int:
    """Print the table and append it to `out` when given; the script's exit status (0)."""
    text = "\n".join(lines)
    print(text)
    if out:
        with open(out, "a") as f:
            f.write(text + "\n")
    return 0
