#!/usr/bin/env bash
# CapFilt's pretraining experiment on the synthetic world (BLIP's Tables 1 and 2 at
# small scale): BLIP pretrained at equal updates on noisy web captions, and on the
# data CapFilt bootstrapped from them, evaluated on the clean validation split.
#
#   tools/capfilt_experiment.sh [GLIMPSE]      (default: target/release/glimpse)
#
# Run from the repository root. Every step is skipped when its output exists, so a
# killed run continues where it stopped (a training run resumes from its checkpoint).
# Steps, as BLIP runs them:
#   1. data: the clean world (seed 0, 24000 images), the same images with 40% of
#      their web captions corrupted (`--noise 0.4`), and a small clean set (seed 7,
#      8000 images) for fine-tuning the captioner and the filter;
#   2. the vision tower's supervised pretraining (recipes/vit-blip-synth.toml);
#   3. BLIP pretrained on the noisy captions (the baseline);
#   4. the captioner (LM) and the filter (ITC + ITM) fine-tuned separately from that
#      model on the small clean set;
#   5. `glimpse capfilt` over the noisy training split, with nucleus sampling and
#      with beam search;
#   6. BLIP pretrained on the bootstrapped data (captioner and filter), and the
#      ablations: filter only, captioner only, beam search instead of nucleus;
#   7. retrieval (R@1/R@5 both ways, 1000 pairs) and captions (BLEU-4, CIDEr-D,
#      every attribute right on single-object images) on the clean validation split;
#      the table goes to runs/capfilt-experiment/results.md.
set -euo pipefail
G=${1:-target/release/glimpse}
R=recipes/capfilt-experiment
RUNS=runs/capfilt-experiment
OUT=$RUNS/results
mkdir -p "$OUT" data

say() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

synth() { # DIR ARGS...
    local dir=$1; shift
    if [ ! -f "$dir/manifest.json" ] || ! grep -q '"complete": true' "$dir/manifest.json"; then
        say "data: $dir"
        "$G" data synth --out "$dir" "$@"
    fi
}

train() { # RECIPE RUN
    local recipe=$1 run=$2
    if [ -d "$run/export" ]; then return; fi
    say "train: $recipe"
    if [ -d "$run/checkpoints" ]; then "$G" train --resume "$run"; else "$G" train --recipe "$recipe"; fi
    "$G" export --run "$run" --out "$run/export"
}

synth data/synth --count 24000
synth data/synth-noisy --count 24000 --noise 0.4
synth data/capfilt-clean --seed 7 --count 8000 --shard-size 1000 --val-fraction 0 --test-fraction 0

# A finished run resumes to nothing; the tower has no export of its own.
say "train: recipes/vit-blip-synth.toml"
if [ -d runs/vit-blip-synth/checkpoints ]; then "$G" train --resume runs/vit-blip-synth
else "$G" train --recipe recipes/vit-blip-synth.toml; fi

train $R/pretrain-noisy.toml $RUNS/noisy
train $R/filter.toml $RUNS/filter
train $R/captioner.toml $RUNS/captioner

capfilt() { # NAME ARGS...
    local name=$1; shift
    say "capfilt: $name"
    "$G" capfilt --data data/synth-noisy/train --out data/capfilt-experiment/"$name" \
        --captioner $RUNS/captioner/export/caption --filter $RUNS/filter/export/retrieval \
        --json "$@" > "$OUT/.tmp.json" && mv "$OUT/.tmp.json" "$OUT/capfilt-$name.json"
}
# RUNS_WANTED picks the bootstrapped runs (all four by default), in this order.
WANTED=${RUNS_WANTED:-capfilt filter-only captioner-only capfilt-beam}
[ -f "$OUT/capfilt-nucleus.json" ] || capfilt nucleus
for name in noisy $WANTED; do
    if [ "$name" = capfilt-beam ] && [ ! -f "$OUT/capfilt-beam.json" ]; then
        capfilt beam --beams 3
    fi
    [ "$name" = noisy ] || train $R/pretrain-$name.toml $RUNS/$name
    m=$RUNS/$name/export
    if [ ! -f "$OUT/$name-retrieval.json" ]; then
        "$G" eval --model $m/retrieval --data data/synth/val --task retrieval --limit 1000 \
            --json > "$OUT/.tmp.json" && mv "$OUT/.tmp.json" "$OUT/$name-retrieval.json"
    fi
    if [ ! -f "$OUT/$name-caption.json" ]; then
        "$G" eval --model $m/caption --data data/synth/val --task caption \
            --json > "$OUT/.tmp.json" && mv "$OUT/.tmp.json" "$OUT/$name-caption.json"
    fi
done

python3 - "$OUT" <<'EOF' | tee "$RUNS/results.md"
import json, sys, os
out = sys.argv[1]
rows = [("noisy", "noisy web captions", "-"), ("filter-only", "filter only", "-"),
        ("captioner-only", "captioner only (nucleus)", "-"),
        ("capfilt", "captioner (nucleus) + filter", "nucleus"),
        ("capfilt-beam", "captioner (beam 3) + filter", "beam")]
def load(n, t):
    with open(os.path.join(out, f"{n}-{t}.json")) as f:
        return json.load(f)["metrics"]
print("| pretraining data | TR@1 | TR@5 | IR@1 | IR@5 | BLEU-4 | CIDEr-D | every attribute right |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for n, label, _ in rows:
    try:
        r, c = load(n, "retrieval"), load(n, "caption")
    except FileNotFoundError:
        print(f"| {label} | not run | | | | | | |")
        continue
    a = c["attributes"]
    print(f"| {label} | {100*r['i2t']['r1']:.1f} | {100*r['i2t']['r5']:.1f} | "
          f"{100*r['t2i']['r1']:.1f} | {100*r['t2i']['r5']:.1f} | {c['bleu4']:.3f} | "
          f"{c['cider']:.2f} | {100*a['all_correct']:.1f}% of {a['n_images']} |")
for n in ("nucleus", "beam"):
    path = os.path.join(out, f"capfilt-{n}.json")
    if not os.path.exists(path):
        continue
    with open(path) as f:
        m = json.load(f)
    print(f"\ncapfilt {n}: {json.dumps(m.get('counts', m))}")
EOF
