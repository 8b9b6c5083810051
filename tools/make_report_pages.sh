#!/usr/bin/env bash
# Regenerates the report pages under docs/reports/:
#
# - eval-{retrieval,zeroshot,caption,vqa}.html: `glimpse eval --report` of the bundled
#   models (models/blip-synth/{retrieval,caption,vqa}, models/clip-synth) on a fresh
#   synthetic set (seed 7, 300 samples, none seen in training);
# - train-vit-clip-synth-short.html: the committed recipes/vit-clip-synth.toml with its
#   schedule cut to 120 updates (validation and a checkpoint every 40, a log line every
#   2; nothing else changed), stopped after 60 updates with --stop-after, as a kill
#   would, and resumed from its checkpoint at 40 to the end. It reads data/synth; when
#   that is missing, a 3,000-sample set (seed 0) is written there;
# - eval-capfilt.html: `glimpse eval --task capfilt --report` of a `glimpse capfilt` run
#   with the bundled captioner and filter (models/capfilt-synth) over 300 noisy samples
#   (`glimpse data synth --noise 0.4 --seed 2026`, the held-out noisy split's seed):
#   corrupted and clean web captions removed and kept per corruption kind;
# - eval-plan.html: `glimpse eval --task plan --report` of the bundled planner
#   (models/planner-synth) on the 200 held-out requests of `glimpse data plans`' test split.
#
#   bash tools/make_report_pages.sh   # about 12 minutes with a debug build on a busy 2-core machine
#
# GLIMPSE names the binary (default target/release/glimpse); WORK a scratch directory
# (default /tmp/glimpse-report-pages, removed first).
set -euo pipefail
cd "$(dirname "$0")/.."
glimpse=${GLIMPSE:-target/release/glimpse}
work=${WORK:-/tmp/glimpse-report-pages}
[ -x "$glimpse" ] || { echo "$glimpse: not built (cargo build --release -p glimpse-cli)" >&2; exit 1; }
rm -rf "$work"
mkdir -p "$work" docs/reports

"$glimpse" data synth --out "$work/data" --count 300 --seed 7 --val-fraction 0 --test-fraction 0 >/dev/null
eval_page() { # task, extra flags...
    local task=$1
    shift
    "$glimpse" eval --task "$task" --data "$work/data/train" --report "$work/eval-$task" "$@"
    cp "$work/eval-$task/index.html" "docs/reports/eval-$task.html"
}
eval_page retrieval
eval_page zeroshot --template "a {}"
eval_page caption --limit 100
eval_page vqa --limit 20

"$glimpse" data synth --out "$work/noisy" --count 300 --seed 2026 --noise 0.4 \
    --val-fraction 0 --test-fraction 0 >/dev/null
"$glimpse" capfilt --data "$work/noisy/train" --out "$work/capfilt"
"$glimpse" eval --task capfilt --data "$work/capfilt" --report "$work/eval-capfilt"
cp "$work/eval-capfilt/index.html" docs/reports/eval-capfilt.html

"$glimpse" data plans --out "$work/plans" --count 2000 >/dev/null
"$glimpse" eval --task plan --data "$work/plans/test.jsonl" --report "$work/eval-plan"
cp "$work/eval-plan/index.html" docs/reports/eval-plan.html

if [ ! -d data/synth/train ]; then
    "$glimpse" data synth --out data/synth --count 3000 --seed 0 >/dev/null
fi
run="$work/runs/vit-clip-synth-short"
sed -e 's/^max_steps = .*/max_steps = 120/' -e 's/^val_every = .*/val_every = 40/' \
    -e 's/^checkpoint_every = .*/checkpoint_every = 40/' -e 's/^log_every = .*/log_every = 2/' \
    recipes/vit-clip-synth.toml > "$work/vit-clip-synth-short.toml"
"$glimpse" train --recipe "$work/vit-clip-synth-short.toml" --out "$run" --stop-after 60
"$glimpse" train --resume "$run"    # prints "report: $run/report.html"
cp "$run/report.html" docs/reports/train-vit-clip-synth-short.html
ls -l docs/reports
