"""Rebuild the quickstart samples in data/ from the full files in ../shared/data (see data/README.md).

WNUT-17: the first sentences of each split, byte for byte (CoNLL columns, lone-TAB separators included).
SST: a seeded random sample of each split, lines byte for byte in their original order (the SST files are
grouped by label, so their first lines would all be positive). Run from the repository root: `python data/make_samples.py`.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SIZES = {"train": 1000, "validation": 300, "test": 300}
WNUT = {"train": "wnut17train.conll", "validation": "emerging.dev.conll", "test": "emerging.test.annotated"}


def first_conll_sentences(path: Path, n: int) -> str:
    out, count = [], 0
    with open(path, encoding="utf-8", newline="") as handle:
        for line in handle:
            out.append(line)
            if not line.strip():
                count += 1
                if count == n:
                    break
    return "".join(out)


def main() -> None:
    if not SHARED.exists():
        sys.exit(f"{SHARED} not found: the samples are built from the shared data folder.")
    (REPO / "data" / "wnut17").mkdir(parents=True, exist_ok=True)
    (REPO / "data" / "sst").mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        text = first_conll_sentences(SHARED / "wnut17" / WNUT[split], n)
        (REPO / "data" / "wnut17" / f"{split}.conll").write_text(text, encoding="utf-8")
        with open(SHARED / "sst" / f"{split}.jsonl", encoding="utf-8") as handle:
            lines = [line for line in handle if line.strip()]
        keep = sorted(random.Random(0).sample(range(len(lines)), n))
        lines = [lines[i] for i in keep]
        (REPO / "data" / "sst" / f"{split}.jsonl").write_text("".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
