#!/usr/bin/env python3
"""Copies a few held-out (test-split) images of the synthetic world, with their
records, into examples/synth/ for the README and demos.

    target/release/glimpse data synth --out data/synth --count 24000 --seed 0
    python3 tools/extract_synth_examples.py data/synth/test examples/synth

Picks, in file order, the first images of each kind: four single objects of
different shapes, and one scene of two objects. Standard library only.
"""
import json
import sys
import tarfile
from pathlib import Path


def main() -> None:
    src, dst = Path(sys.argv[1]), Path(sys.argv[2])
    dst.mkdir(parents=True, exist_ok=True)
    singles, pairs, shapes = [], [], set()
    for shard in sorted(src.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in sorted(members):
                if not name.endswith(".json"):
                    continue
                rec = json.load(tar.extractfile(members[name]))
                png = tar.extractfile(members[name[:-5] + ".png"]).read()
                objs = rec["objects"]
                if len(objs) == 1 and objs[0]["shape"] not in shapes and len(singles) < 4:
                    shapes.add(objs[0]["shape"])
                    singles.append((rec, png))
                elif len(objs) == 2 and rec.get("relations") and not pairs:
                    pairs.append((rec, png))
    for rec, png in singles + pairs:
        o = rec["objects"]
        stem = "-and-".join(f"{x['color']}-{x['shape']}" for x in o)
        (dst / f"{stem}.png").write_bytes(png)
        (dst / f"{stem}.json").write_text(json.dumps(rec, indent=1) + "\n")
        print(f"{stem}.png: {rec['captions'][0]}")


if __name__ == "__main__":
    main()
