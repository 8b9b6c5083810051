"""Filter quality of a `glimpse capfilt` output against the synthetic world's known noise.

    python3 tools/capfilt_quality.py OUT [--threshold T] [--sweep]

OUT is a capfilt output directory made from `glimpse data synth --noise P` shards, whose
records mark each corrupted web caption (`corrupted`, `corruption`). Prints, per
corruption kind, the share of corrupted web captions the filter removed, and the share
of clean web captions it kept, at the threshold of the run (or at --threshold T, from
the ITM probabilities stored in the records); --sweep adds the same two figures for a
range of thresholds. Also the share of synthetic captions kept. Standard library only.
"""

import argparse
import glob
import json
import os
import tarfile


def records(out):
    for path in sorted(glob.glob(os.path.join(out, "shard-*.tar"))):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    yield json.load(tar.extractfile(member))


def score(recs, threshold):
    kinds = {}
    clean = [0, 0]
    for r in recs:
        web = r["capfilt"]["web"]
        if web is None:
            continue
        kept = web["itm"] >= threshold
        if r.get("corrupted"):
            k = kinds.setdefault(r["corruption"], [0, 0])
            k[0] += 1
            k[1] += not kept
        else:
            clean[0] += 1
            clean[1] += kept
    return kinds, clean


def pct(a, b):
    return 100.0 * a / b if b else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--threshold", type=float)
    p.add_argument("--sweep", action="store_true")
    a = p.parse_args()
    with open(os.path.join(a.out, "settings.json")) as f:
        settings = json.load(f)
    recs = list(records(a.out))
    if not recs:
        raise SystemExit(f"{a.out}: no output shards")
    if "corrupted" not in recs[0]:
        raise SystemExit(f"{a.out}: the records carry no noise marks (not `glimpse data synth` data)")
    t = a.threshold if a.threshold is not None else settings["options"]["threshold"]
    kinds, clean = score(recs, t)
    print(f"{len(recs)} samples, filter {settings['filter']}, threshold {t}")
    print()
    print("| web captions | n | removed | kept |")
    print("|---|---:|---:|---:|")
    total = [0, 0]
    for kind in sorted(kinds):
        n, removed = kinds[kind]
        total[0] += n
        total[1] += removed
        print(f"| corrupted: {kind} | {n} | {pct(removed, n):.1f}% | {pct(n - removed, n):.1f}% |")
    print(f"| corrupted, all kinds | {total[0]} | {pct(total[1], total[0]):.1f}% | {pct(total[0] - total[1], total[0]):.1f}% |")
    print(f"| clean | {clean[0]} | {pct(clean[0] - clean[1], clean[0]):.1f}% | {pct(clean[1], clean[0]):.1f}% |")
    syn = [s for r in recs for s in r["capfilt"]["synthetic"]]
    kept = sum(1 for s in syn if s["itm"] is not None and s["itm"] >= t)
    print()
    print(f"synthetic captions: {len(syn)}, kept {kept} ({pct(kept, len(syn)):.1f}%)")
    if a.sweep:
        print()
        print("| threshold | corrupted removed | clean kept |")
        print("|---:|---:|---:|")
        for i in range(1, 20):
            th = i / 20
            k, c = score(recs, th)
            n = sum(v[0] for v in k.values())
            r = sum(v[1] for v in k.values())
            print(f"| {th:.2f} | {pct(r, n):.1f}% | {pct(c[1], c[0]):.1f}% |")


if __name__ == "__main__":
    main()
