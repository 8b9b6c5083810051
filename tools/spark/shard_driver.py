"""Run a per-shard glimpse job on Apache Spark: one task per shard, each running the
`glimpse` binary with `--shard I`.

Every Glimpse batch job over a collection (`glimpse index build`, `glimpse capfilt`)
is a per-shard worker that writes a completion marker last and skips a shard whose
marker exists, so a retried or speculative task is idempotent: Spark only has to map
shard numbers to executors and retry the tasks that fail. The binary (and the model
directory) must be on every executor at the same path, and the output directory on a
file system they share (NFS, a mounted bucket).

    python tools/spark/shard_driver.py --master local[2] --shards 3 --finalize -- \
        target/debug/glimpse index build --data DATA --out IDX

runs `... --shard 0`, `--shard 1`, `--shard 2` as Spark tasks, retrying each up to
`--max-failures` times, then (with `--finalize`) the command once more without
`--shard` on the driver, which for `index build` finds every shard complete and builds
the search index;

    python tools/spark/shard_driver.py --master local[2] --shards 4 --finalize -- \
        target/debug/glimpse capfilt --data SHARDS --out BOOTSTRAPPED

does the same for CapFilt, whose final run writes the manifest. `--kill-shard I` (for
tests) kills the first attempt of shard I with SIGKILL as soon as it has started (its
first line on stderr), as a lost executor would.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time


def run_shard(command, shard, kill_shard, kill_after):
    """One Spark task: the command on one shard; raises on failure so Spark retries."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    attempt = ctx.attemptNumber() if ctx else 0
    argv = command + ["--shard", str(shard)]
    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if shard == kill_shard and attempt == 0:
        # Once the worker has said something (it has started: model loading), wait
        # `kill_after` seconds and kill it, before it can write its marker.
        first = proc.stderr.readline()
        time.sleep(kill_after)
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(
            f"shard {shard} attempt {attempt}: killed with SIGKILL for the test "
            f"(exit {proc.returncode}); its stderr began: {first.strip()}"
        )
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(
            f"shard {shard} attempt {attempt}: {' '.join(argv)} exited with "
            f"{proc.returncode}: {err.strip()[-2000:]}"
        )
    return {
        "shard": shard,
        "attempt": attempt,
        "seconds": round(time.time() - started, 2),
    }


def spark_master(master, max_failures):
    """Local mode retries only when the master says so: `local[N]` -> `local[N,F]`."""
    if master.startswith("local[") and "," not in master:
        return f"{master[:-1]},{max_failures}]"
    return master


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--master", default="local[2]", help="Spark master URL")
    p.add_argument("--shards", type=int, required=True, help="number of shards (tasks)")
    p.add_argument("--only", type=int, nargs="*", help="run only these shard numbers")
    p.add_argument("--max-failures", type=int, default=4, help="attempts per task")
    p.add_argument("--finalize", action="store_true",
                   help="afterwards run the command once without --shard on the driver")
    p.add_argument("--kill-shard", type=int, default=-1, help="testing: SIGKILL this shard's first attempt")
    p.add_argument("--kill-after", type=float, default=0.0,
                   help="testing: seconds between the worker's first stderr line and the kill")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the glimpse command line")
    a = p.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("give the glimpse command after --")
    if a.shards < 1:
        p.error("--shards must be at least 1")

    from pyspark.sql import SparkSession

    spark = (
        SparkSession.builder.master(spark_master(a.master, a.max_failures))
        .appName("glimpse " + " ".join(command[1:3]))
        .config("spark.task.maxFailures", str(a.max_failures))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    shards = a.only if a.only else list(range(a.shards))
    try:
        rdd = spark.sparkContext.parallelize(shards, numSlices=len(shards))
        kill_shard, kill_after = a.kill_shard, a.kill_after
        results = rdd.map(lambda s: run_shard(command, s, kill_shard, kill_after)).collect()
    finally:
        spark.stop()
    for r in sorted(results, key=lambda r: r["shard"]):
        print(json.dumps(r))
    if a.finalize:
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            sys.exit(f"finalize: {' '.join(command)} exited with {done.returncode}")
        sys.stdout.write(done.stdout)


if __name__ == "__main__":
    main()
