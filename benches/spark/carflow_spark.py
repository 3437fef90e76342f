"""The baseline: carflow's shipped transforms (queries/*.sql) as a Spark Structured Streaming job.

What a competent Spark user runs today for the same job: read the Kafka topic, parse the JSON with
an explicit schema (price DECIMAL(12,2), sold_at TIMESTAMP), write the raw lake as Parquet on HDFS
partitioned by day (`dt`), and write the per-minute / 5-minute aggregates to InfluxDB as line
protocol over HTTP from `foreachBatch`.

Two ways of keeping windows right across micro-batches (choose with --windows):

* ``stateful`` (default, the textbook way): one streaming query per output. The raw lake is
  Spark's own Parquet file sink (exactly once through `_spark_metadata`); each Influx measurement is
  a streaming aggregation over `window(sold_at, …)` with `withWatermark("sold_at", lateness)` in
  `update` output mode, so every micro-batch emits the *full* aggregate of every window it touched
  and `foreachBatch` writes those points (InfluxDB overwrites a point with the same series and
  time). Windows older than the watermark are dropped from state. This is the same semantics as
  carflow (rewrite touched windows whole, allowed lateness 4 minutes). Cost: every query reads and
  parses the topic on its own (Spark cannot fan one streaming source out to several stateful sinks).

* ``recompute``: one streaming query; `foreachBatch` parses once, appends the batch to the lake, then
  re-reads from the lake the rows of the windows the batch touched and rewrites those windows'
  aggregates. One Kafka read, no state store; the lake append is not idempotent on replay
  (a user would add batch-id bookkeeping), which only makes it cheaper than carflow's.

Run by benches/harness/bench.py; every non-default Spark setting is listed in SPARK_CONF below and in
benches/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import sys
import time
import urllib.parse
from decimal import Decimal

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    DecimalType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# The record, as declared in engine/src/schema.rs (explicit, never inferred).
SCHEMA = StructType(
    [
        StructField("transaction_id", StringType(), False),
        StructField("sold_at", TimestampType(), False),
        StructField("dealer_id", StringType(), False),
        StructField("dealer_city", StringType(), False),
        StructField("dealer_state", StringType(), False),
        StructField("brand", StringType(), False),
        StructField("model", StringType(), False),
        StructField("model_year", IntegerType(), False),
        StructField("body_type", StringType(), False),
        StructField("fuel_type", StringType(), False),
        StructField("color", StringType(), False),
        StructField("condition", StringType(), False),
        StructField("mileage_km", LongType(), False),
        StructField("price", DecimalType(12, 2), False),
        StructField("currency", StringType(), False),
        StructField("payment_method", StringType(), False),
        StructField("customer_age", IntegerType(), True),
        StructField("salesperson_id", StringType(), False),
        StructField("status", StringType(), False),
    ]
)


def spark_conf(args) -> dict[str, str]:
    """Every setting that differs from Spark's defaults, with why (also in benches/README.md)."""
    return {
        # The Kafka connector, from Maven Central, as plain jars (no Ivy resolution at run time).
        "spark.jars": args.jars,
        # The lake's `dt` and the windows are UTC days/minutes, as in carflow; Spark's default is
        # the JVM's zone.
        "spark.sql.session.timeZone": "UTC",
        # 200 shuffle partitions (the default) means 200 state stores per aggregation per batch on
        # a 2-core machine; Spark's streaming guide says to size it to the cluster.
        "spark.sql.shuffle.partitions": str(args.shuffle_partitions),
        # Listen on loopback only (this machine's rule); no effect on speed.
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.driver.host": "127.0.0.1",
        # The cluster has one datanode (its own hdfs-site says replication 1, as a user's client
        # conf would); the client default of 3 only leaves blocks under-replicated.
        "spark.hadoop.dfs.replication": "1",
    }


# The shipped Influx transforms (queries/*.sql): measurement, window, filter, tags, aggregates.
def influx_queries():
    price = F.col("price")
    return [
        dict(
            name="sales_by_brand",
            width="1 minute",
            where=None,
            tags=["brand"],
            aggs=[
                F.count(F.lit(1)).alias("sales"),
                F.avg(price).alias("avg_price"),
                F.sum(price).alias("revenue"),
            ],
        ),
        dict(
            name="sales_by_state",
            width="1 minute",
            where=F.col("status") == "completed",
            tags=[("state", "dealer_state")],
            aggs=[F.count(F.lit(1)).alias("sales"), F.sum(price).alias("revenue")],
        ),
        dict(
            name="sales_by_payment",
            width="1 minute",
            where=None,
            tags=["payment_method", "condition"],
            aggs=[F.count(F.lit(1)).alias("sales"), F.sum(price).alias("revenue")],
        ),
        dict(
            name="sales_by_model",
            width="1 minute",
            where=F.col("status") == "completed",
            tags=["brand", "model"],
            aggs=[F.count(F.lit(1)).alias("sales"), F.sum(price).alias("revenue")],
        ),
        dict(
            name="price_percentiles",
            width="5 minutes",
            where=F.col("status") == "completed",
            tags=["condition"],
            aggs=[
                F.count(F.lit(1)).alias("sales"),
                F.min(price).cast("double").alias("min_price"),
                # one approximate-percentile buffer for the four quantiles
                F.percentile_approx(price.cast("double"), [0.25, 0.5, 0.75, 0.9]).alias("pct"),
                F.max(price).cast("double").alias("max_price"),
            ],
            post=lambda df: df.select(
                *[c for c in df.columns if c != "pct"],
                *[F.col("pct")[i].alias(n) for i, n in enumerate(["p25", "p50", "p75", "p90"])],
            ).drop("pct"),
        ),
    ]


def tag_columns(q: dict):
    """(tag name, source column) pairs: a tag is a string column, as in carflow's mapping."""
    return [(t, t) if isinstance(t, str) else t for t in q["tags"]]


# ---------------------------------------------------------------------------------------------
# InfluxDB line protocol over HTTP (InfluxDB 1.8 /write, precision ms, 5000 lines per request —
# the same request size carflow uses).

LINES_PER_REQUEST = 5000


def _esc_key(s: str) -> str:
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(v) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"{v}i"
    if isinstance(v, Decimal):
        return format(v, "f")
    return repr(float(v))


class Influx:
    def __init__(self, url: str, db: str):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or 8086
        self.path = "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})
        self.conn = None
        self.points = 0

    def post(self, body: bytes):
        for attempt in range(5):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.request("POST", self.path, body=body,
                                  headers={"Content-Type": "text/plain; charset=utf-8"})
                r = self.conn.getresponse()
                text = r.read()
                if r.status == 204:
                    return
                if r.status < 500:
                    raise RuntimeError(f"influx write: HTTP {r.status}: {text[:300]!r}")
            except (OSError, http.client.HTTPException):
                self.conn = None
            time.sleep(0.2 * 2**attempt)
        raise RuntimeError("influx write: failed after 5 attempts")

    def write_rows(self, measurement: str, tags: list[str], fields: list[str], rows):
        lines = []
        for r in rows:
            d = r.asDict()
            fv = [(k, _field(d[k])) for k in fields]
            fv = [f"{_esc_key(k)}={v}" for k, v in fv if v is not None]
            if not fv:
                continue
            tv = "".join(
                f",{_esc_key(k)}={_esc_key(d[k])}" for k in sorted(tags) if d[k] not in (None, "")
            )
            lines.append(f"{measurement}{tv} {','.join(fv)} {d['time_ms']}")
            if len(lines) >= LINES_PER_REQUEST:
                self.post(("\n".join(lines) + "\n").encode())
                self.points += len(lines)
                lines = []
        if lines:
            self.post(("\n".join(lines) + "\n").encode())
            self.points += len(lines)


# ---------------------------------------------------------------------------------------------


def parse(kafka_df: DataFrame) -> DataFrame:
    """Kafka rows → the `transactions` table of carflow: the record plus Kafka metadata."""
    return (
        kafka_df.select(
            F.from_json(F.col("value").cast("string"), SCHEMA).alias("t"),
            F.col("topic").alias("_topic"),
            F.col("partition").alias("_partition"),
            F.col("offset").alias("_offset"),
            F.col("timestamp").alias("_kafka_ts"),
        )
        .select("t.*", "_topic", "_partition", "_offset", "_kafka_ts")
        .where(F.col("sold_at").isNotNull())
    )


def with_dt(df: DataFrame) -> DataFrame:
    # queries/cars.sql: SELECT *, CAST(date_trunc('day', sold_at) AS DATE) AS dt
    return df.withColumn("dt", F.to_date(F.col("sold_at")))


def aggregate(df: DataFrame, q: dict, window_col) -> DataFrame:
    if q["where"] is not None:
        df = df.where(q["where"])
    keys = [F.col(src).alias(name) for name, src in tag_columns(q)]
    out = df.groupBy(window_col.alias("w"), *keys).agg(*q["aggs"])
    if "post" in q:
        out = q["post"](out)
    return out.withColumn("time_ms", F.unix_millis(F.col("w.start"))).drop("w")


def point_writer(args, q: dict):
    tags = [name for name, _ in tag_columns(q)]

    def write(batch: DataFrame, batch_id: int):
        fields = [c for c in batch.columns if c not in tags and c != "time_ms"]
        Influx(args.influx_url, args.influx_db).write_rows(q["name"], tags, fields, batch.collect())

    return write


def kafka_stream(spark: SparkSession, args) -> DataFrame:
    r = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", args.brokers)
        .option("subscribe", args.topic)
        .option("startingOffsets", "earliest")
    )
    if args.max_offsets_per_trigger > 0:
        r = r.option("maxOffsetsPerTrigger", str(args.max_offsets_per_trigger))
    return r.load()


def trigger(w, args):
    if args.trigger == "availableNow":
        return w.trigger(availableNow=True)
    return w.trigger(processingTime=args.trigger)


def run_stateful(spark, args):
    """One streaming query per output; windows kept in Spark's state store."""
    src = parse(kafka_stream(spark, args))
    queries = []
    w = (
        with_dt(src)
        .writeStream.format("parquet")
        .partitionBy("dt")
        .option("path", f"{args.lake}/cars")
        .option("checkpointLocation", f"{args.checkpoint}/cars")
        .queryName("cars")
    )
    only = set(args.only.split(",")) if args.only else None
    if only is None or "cars" in only:
        queries.append(trigger(w, args).start())
    for q in influx_queries():
        if only is not None and q["name"] not in only:
            continue
        df = src.withWatermark("sold_at", args.lateness)
        agg = aggregate(df, q, F.window("sold_at", q["width"]))
        w = (
            agg.writeStream.outputMode("update")
            .foreachBatch(point_writer(args, q))
            .option("checkpointLocation", f"{args.checkpoint}/{q['name']}")
            .queryName(q["name"])
        )
        queries.append(trigger(w, args).start())
    return queries


def run_recompute(spark, args):
    """One streaming query; foreachBatch appends to the lake and recomputes the touched windows."""
    lake = f"{args.lake}/cars"
    qs = influx_queries()

    def batch_fn(batch: DataFrame, batch_id: int):
        batch = with_dt(batch).persist()
        try:
            span = batch.agg(F.min("sold_at").alias("lo"), F.max("sold_at").alias("hi")).first()
            if span["lo"] is None:
                return
            batch.write.mode("append").partitionBy("dt").parquet(lake)
            # the touched windows: every 1- and 5-minute window between the batch's first and last
            # event (aligned to 5 minutes, so it covers both widths); every window in [lo, hi) is
            # read whole, so rewriting all of them is right
            lo = floor5(span["lo"])
            hi = floor5(span["hi"]) + datetime.timedelta(minutes=5)
            rows = (
                spark.read.parquet(lake)
                .where(F.col("dt").between(lo.date(), hi.date()))
                .where((F.col("sold_at") >= F.lit(lo)) & (F.col("sold_at") < F.lit(hi)))
                .persist()
            )
            try:
                for q in qs:
                    agg = aggregate(rows, q, F.window("sold_at", q["width"]))
                    point_writer(args, q)(agg, batch_id)
            finally:
                rows.unpersist()
        finally:
            batch.unpersist()

    w = (
        kafka_stream(spark, args)
        .transform(parse)
        .writeStream.foreachBatch(batch_fn)
        .option("checkpointLocation", f"{args.checkpoint}/recompute")
        .queryName("recompute")
    )
    return [trigger(w, args).start()]


def floor5(t: datetime.datetime) -> datetime.datetime:
    return t.replace(minute=t.minute - t.minute % 5, second=0, microsecond=0)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--brokers", default="127.0.0.1:9092")
    p.add_argument("--topic", required=True)
    p.add_argument("--lake", required=True, help="lake root, e.g. hdfs://127.0.0.1:9000/bench/spark")
    p.add_argument("--checkpoint", required=True, help="checkpoint root (hdfs:// or file://)")
    p.add_argument("--influx-url", default="http://127.0.0.1:8086")
    p.add_argument("--influx-db", required=True)
    p.add_argument("--jars", required=True, help="comma-separated Kafka connector jars")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--windows", choices=["stateful", "recompute"], default="stateful")
    p.add_argument("--trigger", default="availableNow", help="availableNow or a processing-time interval")
    p.add_argument("--max-offsets-per-trigger", type=int, default=50000,
                   help="rows per micro-batch (carflow's batch.max_rows is 50000); 0 = no limit")
    p.add_argument("--shuffle-partitions", type=int, default=2)
    p.add_argument("--lateness", default="4 minutes", help="watermark delay (carflow: windows.allowed_lateness)")
    p.add_argument("--progress-file", help="write one JSON line per query progress here")
    p.add_argument("--only", help="comma-separated outputs to run (cars and/or measurement names)")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark setting (recorded in the results as non-default)")
    args = p.parse_args(argv)

    b = SparkSession.builder.master(args.master).appName(f"carflow-baseline-{args.windows}")
    conf = spark_conf(args)
    conf.update(kv.split("=", 1) for kv in args.conf)
    for k, v in conf.items():
        b = b.config(k, v)
    spark = b.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    print(json.dumps({"event": "started", "t": time.time(), "spark": spark.version, "conf": conf}), flush=True)

    queries = run_recompute(spark, args) if args.windows == "recompute" else run_stateful(spark, args)
    progress = open(args.progress_file, "a") if args.progress_file else None
    seen: dict[str, int] = {}
    failed = None
    try:
        while any(q.isActive for q in queries):
            for q in queries:
                for pr in q.recentProgress:
                    if pr["batchId"] > seen.get(q.name, -1) and pr["numInputRows"] >= 0:
                        seen[q.name] = pr["batchId"]
                        if progress:
                            progress.write(json.dumps({"query": q.name, **pr}, default=str) + "\n")
                            progress.flush()
                if q.exception() is not None and failed is None:
                    failed = f"{q.name}: {q.exception()}"
            if failed:
                break
            time.sleep(0.5)
        for q in queries:
            if q.exception() is not None and failed is None:
                failed = f"{q.name}: {q.exception()}"
            for pr in q.recentProgress:
                if pr["batchId"] > seen.get(q.name, -1):
                    seen[q.name] = pr["batchId"]
                    if progress:
                        progress.write(json.dumps({"query": q.name, **pr}, default=str) + "\n")
    finally:
        if progress:
            progress.close()
        for q in queries:
            if q.isActive:
                q.stop()
    print(json.dumps({"event": "finished", "t": time.time(), "failed": failed,
                      "batches": {k: v + 1 for k, v in seen.items()}}), flush=True)
    spark.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
