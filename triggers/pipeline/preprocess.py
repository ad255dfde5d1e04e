"""The PySpark job of the preprocessing step: exported windows + history -> training dataset.

Runs in the ``SparkApplication`` the pipeline creates (``mainApplicationFile``) and, in the
tests, under ``pyspark`` local mode. Inputs are the Parquet files observer exported for the
episode (the drifted window and its reference) and, optionally, earlier training data. The
output is one Parquet dataset with a ``split`` column (``drifted``, ``reference``,
``history``), deduplicated on the span id (a span in both the history and the new window is
kept once, from the newest source), plus a ``_summary.json`` with row counts per split.

    spark-submit preprocess.py --current s3://x/current.parquet \\
        --reference s3://x/reference.parquet --history s3://hist/ --out s3://runs/r1/dataset
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Newest first: on duplicates the drifted window wins over the reference, which wins over
# the history.
SOURCES = ("drifted", "reference", "history")
KEY_COLUMNS = ("trace_id", "span_id")


def build_dataset(spark: Any, current: str, reference: str, history: str = "") -> Any:
    """The training DataFrame (lazy) from the input locations."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    frames = []
    for rank, (split, path) in enumerate(zip(SOURCES, (current, reference, history))):
        if not path:
            continue
        frames.append(spark.read.parquet(path).withColumn("split", F.lit(split))
                      .withColumn("_rank", F.lit(rank)))
    if not frames:
        raise ValueError("no input: give --current at least")
    df = frames[0]
    for other in frames[1:]:
        df = df.unionByName(other, allowMissingColumns=True)
    keys = [c for c in KEY_COLUMNS if c in df.columns]
    if keys:
        newest = Window.partitionBy(*keys).orderBy(F.col("_rank"))
        df = df.withColumn("_n", F.row_number().over(newest)).filter(F.col("_n") == 1).drop("_n")
    return df.drop("_rank")


def run(spark: Any, current: str, reference: str, history: str, out: str, episode: str = "") -> dict[str, Any]:
    """Build the dataset, write it to ``out`` and return its summary."""
    df = build_dataset(spark, current, reference, history).cache()
    counts = {r["split"]: r["count"] for r in df.groupBy("split").count().collect()}
    df.write.mode("overwrite").parquet(out)
    summary = {"episode_id": episode, "rows": sum(counts.values()), "by_split": counts,
               "columns": df.columns}
    df.unpersist()
    # Beside the dataset, through Spark's own filesystem layer (works for s3a://, hdfs://...).
    spark.sparkContext.parallelize([json.dumps(summary, sort_keys=True)], 1) \
        .saveAsTextFile(out.rstrip("/") + "_summary")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="preprocess", description="observer's preprocessing job")
    p.add_argument("--current", required=True, help="Parquet of the drifted window")
    p.add_argument("--reference", default="", help="Parquet of the reference window")
    p.add_argument("--history", default="", help="earlier training data (Parquet); empty: none")
    p.add_argument("--episode", default="", help="episode id (recorded in the summary)")
    p.add_argument("--out", required=True, help="where the training dataset goes")
    args = p.parse_args(argv)
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        # The Spark image runs this file on its own, without observer installed: the message
        # of observer.core.extras.MissingExtra, written out here.
        name = (e.name or "") if isinstance(e, ModuleNotFoundError) else ""
        absent = name.partition(".")[0] == "pyspark"
        raise SystemExit(
            "The preprocessing job: the optional package pyspark "
            f"{'is not installed' if absent else f'does not import ({e})'}; "
            "install the extra: pip install 'observer[spark]'"
        ) from None

    spark = SparkSession.builder.appName(f"observer-preprocess-{args.episode}").getOrCreate()
    try:
        summary = run(spark, args.current, args.reference, args.history, args.out, args.episode)
    finally:
        spark.stop()
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
