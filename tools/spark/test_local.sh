#!/usr/bin/env bash
# The Spark driver in local mode, for both per-shard jobs over 4 synthetic shards as 4
# Spark tasks on local[2], one task's first attempt killed with SIGKILL mid-shard and
# retried, then the output compared with the single-machine run of the same command:
# - `glimpse index build`: every .npy and Parquet file byte for byte, a search's results;
# - `glimpse capfilt` (noisy shards, bundled captioner and filter): every bootstrapped
#   shard and the manifest byte for byte, no temporary file left.
#
#   bash tools/spark/test_local.sh            (from the repository root)
#
# Installs pyspark from PyPI into tools/spark/.venv on first use (Java 17 must be on
# PATH) and builds the debug glimpse binary.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv=tools/spark/.venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import pyspark" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet pyspark
fi
cargo build -q -p glimpse-cli
glimpse="$root/target/debug/glimpse"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$glimpse" data synth --out "$work/data" --count 200 --shard-size 50 \
    --val-fraction 0 --test-fraction 0 --json > /dev/null
cmd=(index build --data "$work/data/train" --batch-size 8 --json)

start=$(date +%s)
"$glimpse" "${cmd[@]}" --out "$work/single" > "$work/single.json"
echo "single machine: $(( $(date +%s) - start ))s"

start=$(date +%s)
"$venv/bin/python" tools/spark/shard_driver.py --master 'local[2]' --shards 4 \
    --kill-shard 2 --finalize -- \
    "$glimpse" "${cmd[@]}" --out "$work/spark" > "$work/spark.out" 2> "$work/spark.err" \
    || { tail -30 "$work/spark.err"; exit 1; }
echo "spark local[2]: $(( $(date +%s) - start ))s"
grep '^{"shard"' "$work/spark.out"
grep -q '"shard": 2, "attempt": 1' "$work/spark.out" \
    || { echo "FAIL: shard 2 was not retried after the kill"; exit 1; }
grep -m1 -o 'shard 2 attempt 0: killed with SIGKILL[^;]*' "$work/spark.err" \
    || { echo "FAIL: the first attempt of shard 2 was not killed"; exit 1; }

for f in $(cd "$work/single" && find img_emb text_emb metadata -type f | sort); do
    cmp "$work/single/$f" "$work/spark/$f" || { echo "FAIL: $f differs"; exit 1; }
done
q=(search --text "a red circle" --k 10 --json)
diff <("$glimpse" "${q[@]}" --index "$work/single") <("$glimpse" "${q[@]}" --index "$work/spark") \
    || { echo "FAIL: search results differ"; exit 1; }
echo "OK: $(find "$work/spark/img_emb" -type f | wc -l) shards equal to the single-machine run, search results equal"

# glimpse capfilt through the same driver: shard 1's first attempt is killed a moment
# after it starts (loading or mid-shard), and the retry must finish it.
"$glimpse" data synth --out "$work/noisy" --count 200 --shard-size 50 --noise 0.4 --seed 3 \
    --val-fraction 0 --test-fraction 0 --json > /dev/null
cf=(capfilt --data "$work/noisy/train" --batch-size 8 --json)
start=$(date +%s)
"$glimpse" "${cf[@]}" --out "$work/cf-single" > "$work/cf-single.json"
echo "capfilt, single machine: $(( $(date +%s) - start ))s"
start=$(date +%s)
"$venv/bin/python" tools/spark/shard_driver.py --master 'local[2]' --shards 4 \
    --kill-shard 1 --kill-after 0.3 --finalize -- \
    "$glimpse" "${cf[@]}" --out "$work/cf-spark" > "$work/cf-spark.out" 2> "$work/cf-spark.err" \
    || { tail -30 "$work/cf-spark.err"; exit 1; }
echo "capfilt, spark local[2]: $(( $(date +%s) - start ))s"
grep '^{"shard"' "$work/cf-spark.out"
grep -q '"shard": 1, "attempt": 1' "$work/cf-spark.out" \
    || { echo "FAIL: capfilt shard 1 was not retried after the kill"; exit 1; }
grep -m1 -o 'shard 1 attempt 0: killed with SIGKILL[^;]*' "$work/cf-spark.err" \
    || { echo "FAIL: the first attempt of capfilt shard 1 was not killed"; exit 1; }
n=0
for f in $(cd "$work/cf-single" && ls shard-*.tar) manifest.json; do
    cmp "$work/cf-single/$f" "$work/cf-spark/$f" || { echo "FAIL: capfilt $f differs"; exit 1; }
    n=$((n + 1))
done
[ "$n" -eq 5 ] || { echo "FAIL: expected 4 capfilt shards and a manifest, compared $n files"; exit 1; }
if ls -A "$work/cf-spark" | grep -q '\.tmp'; then
    echo "FAIL: temporary files left in the capfilt output"; exit 1
fi
echo "OK: 4 capfilt shards and the manifest equal to the single-machine run"
