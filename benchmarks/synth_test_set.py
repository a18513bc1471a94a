"""Write ``synth_test.bin``: a third held-out verification set of generated faces for report-only readings.

Its identities come from a seed stream no other split uses (not training, not ``synth_val``, not
``synth_dev``), drawn from the same population as the run's data (the spec in ``<run>/data/synth_meta.json``:
seed, difficulty, JPEG qualities). Nothing in the pipeline reads it; benchmarks such as
``benchmarks/qat_seeds.py --held-out`` score models on it when the val set's pairs are too few to say
which of two close models is better. Nothing may be chosen by it.

    python benchmarks/synth_test_set.py --run runs/bench-default --pairs 6000 --identities 1000 --out /tmp/t
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from distill.data.synth import SynthSpec, synthesize_split  # noqa: E402


def run_spec(run: Path) -> SynthSpec:
    """The generated-data spec the run's data stage wrote its faces with."""
    meta = json.loads((run / "data" / "synth_meta.json").read_text())
    fields = {f.name for f in dataclasses.fields(SynthSpec)}
    spec = {k: v for k, v in meta["spec"].items() if k in fields}
    spec["jpeg_quality_range"] = tuple(spec["jpeg_quality_range"])
    return SynthSpec(**spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a run folder whose data stage generated its faces")
    ap.add_argument("--pairs", type=int, default=6000, help="pairs (half genuine) [6000]")
    ap.add_argument("--identities", type=int, default=1000, help="identities the pairs draw from [1000]")
    ap.add_argument("--out", required=True, help="folder to write synth_test.bin into")
    args = ap.parse_args()
    path = synthesize_split(args.out, run_spec(Path(args.run)), "test", (args.identities, args.pairs))
    print(f"wrote {path} ({args.pairs} pairs of {args.identities} identities no other split uses)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
