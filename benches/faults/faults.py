#!/usr/bin/env python3
"""The fault-injection run (issue 13): two `carflow run` engines in one consumer group consume a
6-partition topic while it is being filled, and faults are injected at seeded random times; at the end
the results are checked with tools independent of the engine (the topic read back with librdkafka, the
lake copied back from HDFS and read with DuckDB, InfluxDB read with InfluxQL over HTTP).

Started by benches/faults/run.sh, which creates the venv, starts an isolated Kafka/HDFS/InfluxDB on
other loopback ports and another run directory (deploy/services.sh with CARFLOW_*_PORT), and stops it
at the end. Run `benches/faults/run.sh --help` for the options.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import datetime as dt
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

try:  # confluent-kafka >= 2.x
    from confluent_kafka import ConsumerGroupTopicPartitions
except ImportError:  # pragma: no cover
    from confluent_kafka.admin import ConsumerGroupTopicPartitions  # type: ignore

PARTITIONS = 6
GENERATOR_START = "2026-01-01T00:00:00Z"
# Very late records: six hours of event time before the first generated one.
LATE_START_MS = int(dt.datetime(2025, 12, 31, 18, 0, tzinfo=dt.timezone.utc).timestamp() * 1000)
SESSION_TIMEOUT_S = 10.0  # the engine's session.timeout.ms (engine/src/source/kafka.rs)
MAX_POLL_INTERVAL_MS = 20000  # set through [kafka.properties] in the engine's config file

MALFORMED_KINDS = [
    "truncated",
    "not_json",
    "wrong_type_mileage",
    "wrong_type_price",
    "bad_timestamp",
    "missing_sold_at",
    "missing_brand",
    "invalid_utf8",
    "empty_value",
    "null_value",
    "two_objects",
    "json_array",
]

# The shipped Influx queries (queries/*.sql), reimplemented in DuckDB SQL over the lake's `cars`
# (minus the very late rows). Each: measurement, window (ms), tags, fields, SQL.
# Fields compared exactly: counts, min, max. Sums and averages: to float rounding. Percentiles: 5%.
INFLUX_QUERIES = [
    (
        "sales_by_brand",
        ["brand"],
        ["sales", "avg_price", "revenue"],
        """SELECT (epoch_ms(sold_at) // 60000) * 60000 AS t, brand,
                  count(*) AS sales, avg(price) AS avg_price, sum(price) AS revenue
           FROM ok GROUP BY ALL""",
    ),
    (
        "sales_by_state",
        ["state"],
        ["sales", "revenue"],
        """SELECT (epoch_ms(sold_at) // 60000) * 60000 AS t, dealer_state AS state,
                  count(*) AS sales, sum(price) AS revenue
           FROM ok WHERE status = 'completed' GROUP BY ALL""",
    ),
    (
        "sales_by_payment",
        ["payment_method", "condition"],
        ["sales", "revenue"],
        """SELECT (epoch_ms(sold_at) // 60000) * 60000 AS t, payment_method, condition,
                  count(*) AS sales, sum(price) AS revenue
           FROM ok GROUP BY ALL""",
    ),
    (
        "sales_by_model",
        ["brand", "model"],
        ["sales", "revenue"],
        """SELECT (epoch_ms(sold_at) // 60000) * 60000 AS t, brand, model,
                  count(*) AS sales, sum(price) AS revenue
           FROM ok WHERE status = 'completed' GROUP BY ALL""",
    ),
    (
        "price_percentiles",
        ["condition"],
        ["sales", "min_price", "p25", "p50", "p75", "p90", "max_price"],
        """SELECT (epoch_ms(sold_at) // 300000) * 300000 AS t, condition,
                  count(*) AS sales, CAST(min(price) AS DOUBLE) AS min_price,
                  quantile_cont(CAST(price AS DOUBLE), 0.25) AS p25,
                  quantile_cont(CAST(price AS DOUBLE), 0.5) AS p50,
                  quantile_cont(CAST(price AS DOUBLE), 0.75) AS p75,
                  quantile_cont(CAST(price AS DOUBLE), 0.9) AS p90,
                  CAST(max(price) AS DOUBLE) AS max_price
           FROM ok WHERE status = 'completed' GROUP BY ALL""",
    ),
    (
        # queries/sales_by_region.sql: joined with the shipped reference tables (REFERENCE_DIR is
        # substituted with the repository's reference/ directory).
        "sales_by_region",
        ["region", "segment"],
        ["sales", "revenue", "new_sales", "new_discount"],
        """SELECT (epoch_ms(x.sold_at) // 60000) * 60000 AS t, d.region, d.segment,
                  count(*) AS sales, sum(x.price) AS revenue,
                  count(v.msrp) FILTER (WHERE x.condition = 'new') AS new_sales,
                  avg(1.0 - CAST(x.price AS DOUBLE) / v.msrp) FILTER (WHERE x.condition = 'new') AS new_discount
           FROM ok x
           JOIN read_csv('REFERENCE_DIR/dealers.csv', header = true) d ON d.dealer_id = x.dealer_id
           LEFT JOIN read_csv('REFERENCE_DIR/vehicles.csv', header = true) v
             ON v.brand = x.brand AND v.model = x.model AND v.model_year = x.model_year
           GROUP BY ALL""",
    ),
]
EXACT_FIELDS = {"sales", "min_price", "max_price", "new_sales"}
APPROX_FIELDS = {"p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9}
# The sorted prices of each percentile window, to judge approximate percentiles in rank space too.
PERCENTILE_VALUES_SQL = """SELECT (epoch_ms(sold_at) // 300000) * 300000 AS t, condition,
                                  list(CAST(price AS DOUBLE) ORDER BY price) AS v
                           FROM ok1 WHERE status = 'completed' GROUP BY ALL"""


def percentile_ok(actual: float, exact: float, q: float, values: list[float] | None) -> bool:
    """An approximate percentile (DataFusion's approx_percentile_cont, a t-digest) is right when it is
    within 5% of the exact one, or (small windows, where t-digest and linear interpolation differ by
    more than 5%) when it lies between the values one rank (or 1% of the ranks) either side of the
    exact position."""
    if abs(actual - exact) <= 0.05 * max(1.0, abs(exact)):
        return True
    if not values:
        return False
    n = len(values)
    pos = q * (n - 1)
    slack = max(1.0, 0.01 * n)
    lo = values[max(0, int(pos - slack))]
    hi = values[min(n - 1, int(pos + slack + 0.999999))]
    return lo - 1e-6 <= actual <= hi + 1e-6


def log(msg: str) -> None:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%H:%M:%S")
    print(f"[faults {stamp}] {msg}", flush=True)


class HarnessError(Exception):
    """The run itself could not be carried out (not a finding about the engine)."""


# ---------------------------------------------------------------------------------------------------
# services (the isolated instance run.sh started), driven through deploy/services.sh


@dataclass
class Services:
    repo: Path
    kafka_port: int
    hdfs_port: int
    hdfs_http_port: int
    influx_port: int

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def hdfs_url(self) -> str:
        return f"hdfs://127.0.0.1:{self.hdfs_port}"

    @property
    def influx_url(self) -> str:
        return f"http://127.0.0.1:{self.influx_port}"

    def sh(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        # The environment run.sh exported (CARFLOW_RUN_DIR and the CARFLOW_*_PORT of this instance)
        # is inherited, so every call talks to the isolated instance only.
        r = subprocess.run(
            [str(self.repo / "deploy/services.sh"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise HarnessError(f"services.sh {' '.join(args)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def influxql(self, db: str | None, q: str, chunked: bool = False) -> list[dict]:
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = db
        if chunked:
            params.update(chunked="true", chunk_size="20000")
        data = urllib.parse.urlencode(params).encode()
        req = urllib.request.Request(f"{self.influx_url}/query", data=data, method="POST")
        with urllib.request.urlopen(req, timeout=300) as r:
            body = r.read().decode()
        out = []
        for line in body.splitlines():
            if line.strip():
                doc = json.loads(line)
                for res in doc.get("results", []):
                    if "error" in res:
                        raise HarnessError(f"InfluxQL {q!r}: {res['error']}")
                out.append(doc)
        return out


# ---------------------------------------------------------------------------------------------------
# engines


def http_json(url: str, timeout: float) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # 503 when degraded: the body is still the health document
        try:
            return json.loads(e.read())
        except Exception:
            return None
    except Exception:
        return None


def http_text(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except Exception:
        return ""


def parse_metrics(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Engine:
    """One `carflow run --engine-id NAME`, restartable; its log is appended to across restarts."""

    def __init__(self, name: str, binary: Path, config: Path, env: dict[str, str], logs: Path, pids: Path):
        self.name = name
        self.binary = binary
        self.config = config
        self.env = env
        self.log = logs / f"engine-{name}.log"
        self.pid_file = pids / f"engine-{name}.pid"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.expected_down = False
        self.stopped = False  # SIGSTOPped
        self.lock = threading.RLock()
        self.last_metrics: dict[str, float] = {}
        self.metrics_by_start: list[dict[str, float]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.lock:
            env = dict(self.env)
            env["CARFLOW_HTTP_LISTEN"] = f"127.0.0.1:{self.port}"
            with open(self.log, "ab") as f:
                f.write(f"\n===== faults.py: start #{self.starts + 1} of engine {self.name} at {time.time():.3f} =====\n".encode())
                f.flush()
                self.proc = subprocess.Popen(
                    [str(self.binary), "--config", str(self.config), "run", "--engine-id", self.name],
                    env=env,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            self.pid_file.write_text(str(self.proc.pid))
            self.starts += 1
            self.expected_down = False
            self.stopped = False
            self.last_metrics = {}

    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _keep_metrics(self) -> None:
        if self.last_metrics:
            self.metrics_by_start.append(self.last_metrics)
            self.last_metrics = {}

    def kill9(self) -> None:
        with self.lock:
            self.expected_down = True
            if self.proc and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self._keep_metrics()

    def sigstop(self) -> None:
        with self.lock:
            if self.proc and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGSTOP)
                self.stopped = True

    def sigcont(self) -> None:
        with self.lock:
            if self.proc and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.stopped = False

    def terminate(self, timeout: float) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        with self.lock:
            self.expected_down = True
            if not self.proc or self.proc.poll() is not None:
                return self.proc.returncode if self.proc else None
            if self.stopped:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.stopped = False
            m = parse_metrics(http_text(f"{self.url}/metrics", 2))
            if m:
                self.last_metrics = m
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                code = None
            self._keep_metrics()
            return code

    def health(self, timeout: float = 0.8) -> dict | None:
        if self.stopped or not self.running():
            return None
        return http_json(f"{self.url}/health", timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------------------------------
# monitor: /health of every engine, RSS from /proc, the topic's end offsets


def vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Monitor:
    def __init__(self, engines: list[Engine], topic: str, brokers: str, t0: float):
        self.engines = engines
        self.topic = topic
        self.brokers = brokers
        self.t0 = t0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        # Per partition: times and values at which the highest processed offset (any engine) rose.
        self.progress: dict[int, list[tuple[float, int]]] = {p: [(0.0, 0)] for p in range(PARTITIONS)}
        self.owned: dict[str, list[int]] = {e.name: [] for e in engines}
        self.end_offsets: list[int] = [0] * PARTITIONS
        self.peak_rss_kb = 0
        self.rss_by_engine: dict[str, int] = {e.name: 0 for e in engines}
        self.unexpected_exits: list[dict] = []
        self.problems: collections.Counter = collections.Counter()
        self.health_samples = 0
        self.threads: list[threading.Thread] = []

    def now(self) -> float:
        return time.monotonic() - self.t0

    def processed(self, p: int) -> int:
        with self.lock:
            return self.progress[p][-1][1]

    def processed_all(self) -> list[int]:
        with self.lock:
            return [self.progress[p][-1][1] for p in range(PARTITIONS)]

    def first_progress_after(self, p: int, t: float, value: int) -> float | None:
        """The first time after t at which partition p's processed offset was above value."""
        with self.lock:
            series = list(self.progress[p])
        for ts, v in series:
            if ts >= t and v > value:
                return ts
        return None

    def start(self) -> None:
        for e in self.engines:
            th = threading.Thread(target=self._poll_engine, args=(e,), daemon=True, name=f"health-{e.name}")
            th.start()
            self.threads.append(th)
        th = threading.Thread(target=self._poll_offsets, daemon=True, name="offsets")
        th.start()
        self.threads.append(th)

    def _poll_engine(self, e: Engine) -> None:
        prefix = f"{self.topic}/"
        tick = 0
        while not self.stop.is_set():
            tick += 1
            with e.lock:
                pid = e.pid()
                proc = e.proc
                expected_down = e.expected_down
            if pid:
                kb = vm_hwm_kb(pid)
                with self.lock:
                    self.peak_rss_kb = max(self.peak_rss_kb, kb)
                    self.rss_by_engine[e.name] = max(self.rss_by_engine[e.name], kb)
            elif proc is not None and not expected_down and proc.poll() is not None:
                # Died on its own: note it and start it again (the run goes on; the report shows it).
                # A supervisor's restart (like systemd's Restart=on-failure), with a backoff.
                code = proc.returncode
                last = [x for x in self.unexpected_exits if x["engine"] == e.name]
                backoff = 2.0 if not last or self.now() - last[-1]["t"] > 30 else 10.0
                tail = [ln for ln in e.log_tail(40).splitlines() if "ERROR" in ln or ln.startswith("error")]
                log(f"engine {e.name} exited by itself (code {code}); restarting it in {backoff:.0f}s: "
                    f"{tail[-1][:300] if tail else ''}")
                with self.lock:
                    self.unexpected_exits.append({"engine": e.name, "t": round(self.now(), 1), "code": code,
                                                  "error": tail[-1][:300] if tail else ""})
                with e.lock:
                    e._keep_metrics()
                    e.expected_down = True
                if self.stop.wait(backoff):
                    return
                with e.lock:
                    if e.expected_down and e.proc is proc:
                        e.start()
                continue
            h = e.health()
            if h is not None:
                t = self.now()
                with self.lock:
                    self.health_samples += 1
                    if h.get("problem"):
                        self.problems[str(h["problem"])[:160]] += 1
                    self.owned[e.name] = sorted(
                        int(k[len(prefix):]) for k in h.get("owned", []) if k.startswith(prefix)
                    )
                    for k, v in (h.get("processed") or {}).items():
                        if not k.startswith(prefix) or not isinstance(v, int):
                            continue
                        p = int(k[len(prefix):])
                        if 0 <= p < PARTITIONS and v > self.progress[p][-1][1]:
                            self.progress[p].append((t, v))
                if tick % 8 == 0:
                    m = parse_metrics(http_text(f"{e.url}/metrics", 0.8))
                    if m:
                        with e.lock:
                            if e.pid() == pid:
                                e.last_metrics = m
            self.stop.wait(0.25)

    def _poll_offsets(self) -> None:
        c = Consumer({"bootstrap.servers": self.brokers, "group.id": "faults-monitor", "enable.auto.commit": False,
                      "socket.timeout.ms": 2000, "log_level": 0})
        try:
            while not self.stop.is_set():
                for p in range(PARTITIONS):
                    try:
                        _, hi = c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=1.0, cached=False)
                        with self.lock:
                            self.end_offsets[p] = max(self.end_offsets[p], hi)
                    except KafkaException:
                        pass
                self.stop.wait(1.0)
        finally:
            c.close()

    def close(self) -> None:
        self.stop.set()
        for th in self.threads:
            th.join(5)


# ---------------------------------------------------------------------------------------------------
# producing: `carflow generate` for the good records, Python for the malformed and very late ones


def malformed_payload(kind: str, template: dict, rng: random.Random) -> bytes | None:
    good = json.dumps(dict(template, transaction_id=str(uuid.UUID(int=rng.getrandbits(128)))),
                      separators=(",", ":")).encode()
    if kind == "truncated":
        return good[: rng.randint(5, len(good) - 5)]
    if kind == "not_json":
        return b"not json at all #" + str(rng.randint(0, 10**9)).encode()
    if kind == "wrong_type_mileage":
        return json.dumps(dict(template, mileage_km="far")).encode()
    if kind == "wrong_type_price":
        return json.dumps(dict(template, price="cheap")).encode()
    if kind == "bad_timestamp":
        return json.dumps(dict(template, sold_at="yesterday afternoon")).encode()
    if kind == "missing_sold_at":
        d = dict(template)
        del d["sold_at"]
        return json.dumps(d).encode()
    if kind == "missing_brand":
        d = dict(template)
        del d["brand"]
        return json.dumps(d).encode()
    if kind == "invalid_utf8":
        i = good.index(b'"brand":"') + len(b'"brand":"')
        return good[:i] + b"\xff\xfe" + good[i:]
    if kind == "empty_value":
        return b""
    if kind == "null_value":
        return None
    if kind == "two_objects":
        return good + b" " + good
    if kind == "json_array":
        return b"[" + good + b"]"
    raise ValueError(kind)


def read_template(brokers: str, topic: str, deadline: float) -> dict:
    """One generated transaction from the topic (the shape malformed and late records start from)."""
    c = Consumer({"bootstrap.servers": brokers, "group.id": "faults-template", "enable.auto.commit": False,
                  "log_level": 0})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        while time.monotonic() < deadline:
            m = c.poll(1.0)
            if m is None or m.error() or not m.value():
                continue
            try:
                d = json.loads(m.value())
            except ValueError:
                continue
            if isinstance(d, dict) and "sold_at" in d and "brand" in d:
                return d
        raise HarnessError("no generated transaction appeared in the topic (is `carflow generate` producing?)")
    finally:
        c.close()


class Injector(threading.Thread):
    """Produces the malformed and the very late records, spread over the production time."""

    def __init__(self, brokers: str, topic: str, n_bad: int, n_late: int, duration: float, seed: int,
                 gen_done: threading.Event):
        super().__init__(daemon=True, name="injector")
        self.brokers, self.topic = brokers, topic
        self.n_bad, self.n_late, self.duration = n_bad, n_late, duration
        self.rng = random.Random(seed * 7919 + 1)
        self.gen_done = gen_done
        self.errors: list[str] = []
        self.delivered = 0
        self.failed = 0
        self.late_ids: list[str] = []
        self.bad_by_kind: collections.Counter = collections.Counter()
        self.done = threading.Event()
        self.exc: BaseException | None = None

    def _cb(self, err, msg) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            if len(self.errors) < 10:
                self.errors.append(str(err))

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:  # reported by the main thread
            self.exc = e
        finally:
            self.done.set()

    def _run(self) -> None:
        p = Producer({"bootstrap.servers": self.brokers, "acks": "all", "enable.idempotence": True,
                      "linger.ms": 5, "message.timeout.ms": 300000, "log_level": 0})
        t0 = time.monotonic()
        template = read_template(self.brokers, self.topic, t0 + 120)
        # The very late ones go out after a tenth of the production time, so that every partition has
        # newer events before them; the malformed ones all along.
        items = [("bad", MALFORMED_KINDS[i % len(MALFORMED_KINDS)]) for i in range(self.n_bad)]
        self.rng.shuffle(items)
        slots = sorted(self.rng.uniform(0.02, 0.95) * self.duration for _ in items)
        late_slots = sorted(self.rng.uniform(0.15, 0.9) * self.duration for _ in range(self.n_late))
        plan = sorted([(s, k) for s, k in zip(slots, items)] + [(s, ("late", str(i))) for i, s in enumerate(late_slots)],
                      key=lambda x: x[0])
        for i, (at, (what, kind)) in enumerate(plan):
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            partition = i % PARTITIONS
            if what == "bad":
                payload = malformed_payload(kind, template, self.rng)
                key = f"faults-bad-{kind}-{i}".encode()
                self.bad_by_kind[kind] += 1
            else:
                j = int(kind)
                tid = str(uuid.UUID(int=self.rng.getrandbits(128)))
                sold = dt.datetime.fromtimestamp((LATE_START_MS + j * 37_000) / 1000, dt.timezone.utc)
                rec = dict(template, transaction_id=tid, sold_at=sold.strftime("%Y-%m-%dT%H:%M:%S.") +
                           f"{sold.microsecond // 1000:03d}Z")
                payload = json.dumps(rec, separators=(",", ":")).encode()
                key = f"faults-late-{j}".encode()
                self.late_ids.append(tid)
            while True:
                try:
                    p.produce(self.topic, value=payload, key=key, partition=partition, on_delivery=self._cb)
                    break
                except BufferError:
                    p.poll(0.1)
            p.poll(0)
        left = p.flush(330)
        if left:
            raise HarnessError(f"{left} malformed/late records not delivered")


# ---------------------------------------------------------------------------------------------------
# faults


@dataclass
class Fault:
    kind: str
    target: str = ""
    detail: str = ""
    start: float = 0.0  # seconds since the run's start
    end: float = 0.0  # when the fault was over (service up again, engine restarted / continued)
    affected: list[int] = field(default_factory=list)
    snapshot: list[int] = field(default_factory=list)  # processed offsets when the fault ended
    pending: list[int] = field(default_factory=list)  # partitions with unprocessed records then
    recovery_s: float | None = None
    error: str = ""


FAULT_KINDS = ["kill9", "sigstop", "broker_restart", "hdfs_restart", "hdfs_safemode", "influx_down", "query_edit",
               "query_rename"]


def plan_faults(short: bool, rng: random.Random, kills: int) -> list[str]:
    if short:
        kinds = ["kill9", "broker_restart", "query_rename", "kill9"]
    else:
        kinds = ["kill9"] * kills + ["sigstop", "broker_restart", "hdfs_restart", "hdfs_safemode",
                                      "influx_down", "query_edit", "query_rename", "query_rename"]
    rng.shuffle(kinds)
    return kinds


class FaultRunner(threading.Thread):
    def __init__(self, run: "Run", kinds: list[str], window: tuple[float, float]):
        super().__init__(daemon=True, name="faults")
        self.run_ = run
        self.kinds = kinds
        self.window = window
        self.faults: list[Fault] = []
        self.done = threading.Event()
        self.exc: BaseException | None = None
        self.renames = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as e:
            self.exc = e
            log(f"fault runner failed: {e}\n{traceback.format_exc()}")
        finally:
            self.done.set()

    def _run(self) -> None:
        r = self.run_
        rng = r.rng
        lo, hi = self.window
        n = len(self.kinds)
        slot = (hi - lo) / n
        for i, kind in enumerate(self.kinds):
            at = lo + slot * i + rng.uniform(0, slot * 0.4)
            wait = at - r.mon.now()
            if wait > 0 and r.abort.wait(wait):
                return
            if r.abort.is_set():
                return
            f = Fault(kind=kind, start=r.mon.now())
            try:
                getattr(self, f"do_{kind}")(f, rng)
            except Exception as e:  # a fault that could not be injected is reported, the run goes on
                f.error = f"{type(e).__name__}: {e}"
                log(f"fault {kind} failed: {f.error}")
            f.end = r.mon.now()
            f.snapshot = r.mon.processed_all()
            with r.mon.lock:
                ends = list(r.mon.end_offsets)
            f.pending = [p for p in f.affected if ends[p] > f.snapshot[p]]
            self.faults.append(f)
            log(f"fault {len(self.faults)}/{n} {kind}{' ' + f.target if f.target else ''}: {f.detail} "
                f"({f.end - f.start:.1f}s)")
            # The next fault only once the engines process the affected partitions again (bounded), so
            # that each recovery time belongs to one fault.
            deadline = time.monotonic() + 120
            while f.pending and time.monotonic() < deadline and not r.abort.is_set():
                if all(r.mon.first_progress_after(p, f.end, f.snapshot[p]) is not None for p in f.pending):
                    break
                time.sleep(0.25)
            r.abort.wait(2.0)

    def _pick_engine(self, rng: random.Random) -> Engine:
        return rng.choice([e for e in self.run_.engines if e.running()])

    def _owned(self, e: Engine) -> list[int]:
        with self.run_.mon.lock:
            owned = list(self.run_.mon.owned.get(e.name, []))
        return owned or list(range(PARTITIONS))

    def do_kill9(self, f: Fault, rng: random.Random) -> None:
        e = self._pick_engine(rng)
        f.target = e.name
        f.affected = self._owned(e)
        delay = rng.uniform(0.5, 8.0)
        pid = e.pid()
        e.kill9()
        time.sleep(delay)
        e.start()
        f.detail = f"kill -9 pid {pid}, restarted after {delay:.1f}s"

    def do_sigstop(self, f: Fault, rng: random.Random) -> None:
        e = self._pick_engine(rng)
        f.target = e.name
        f.affected = self._owned(e)
        secs = SESSION_TIMEOUT_S + rng.uniform(5.0, 15.0)
        e.sigstop()
        time.sleep(secs)
        e.sigcont()
        f.detail = f"SIGSTOP for {secs:.1f}s (session timeout {SESSION_TIMEOUT_S:.0f}s), then SIGCONT"

    def _restart(self, f: Fault, svc: str, rng: random.Random) -> None:
        f.target = svc
        f.affected = list(range(PARTITIONS))
        down = rng.uniform(2.0, 8.0)
        t = time.monotonic()
        self.run_.svc.sh("down", svc, timeout=120)
        time.sleep(down)
        self.run_.svc.sh("up", svc, timeout=300)
        f.detail = f"down, {down:.1f}s later up again ({time.monotonic() - t:.1f}s in all)"

    def do_broker_restart(self, f: Fault, rng: random.Random) -> None:
        # `carflow generate` gives a record up after message.timeout.ms (30 s, not configurable), and a
        # broker restart on 2 busy cores can take longer: the generator is paused meanwhile so that the
        # topic still gets (almost) every record. The engines see the whole outage.
        gen = self.run_.gen_proc
        paused = gen is not None and gen.poll() is None
        if paused:
            os.kill(gen.pid, signal.SIGSTOP)
        try:
            self._restart(f, "kafka", rng)
        finally:
            if paused:
                os.kill(gen.pid, signal.SIGCONT)
        if paused:
            f.detail += "; carflow generate paused meanwhile"

    def do_hdfs_restart(self, f: Fault, rng: random.Random) -> None:
        self._restart(f, "hdfs", rng)

    def do_hdfs_safemode(self, f: Fault, rng: random.Random) -> None:
        f.target = "hdfs"
        f.affected = list(range(PARTITIONS))
        secs = rng.uniform(10.0, 20.0)
        self.run_.svc.sh("dfsadmin", "-safemode", "enter", timeout=120)
        time.sleep(secs)
        self.run_.svc.sh("dfsadmin", "-safemode", "leave", timeout=120)
        f.detail = f"safe mode on for {secs:.1f}s"

    def do_influx_down(self, f: Fault, rng: random.Random) -> None:
        f.target = "influxdb"
        f.affected = list(range(PARTITIONS))
        secs = MAX_POLL_INTERVAL_MS / 1000 + rng.uniform(5.0, 15.0)
        t = time.monotonic()
        self.run_.svc.sh("down", "influxdb", timeout=120)
        time.sleep(secs)
        self.run_.svc.sh("up", "influxdb", timeout=300)
        f.detail = (f"down {secs:.1f}s (max.poll.interval.ms {MAX_POLL_INTERVAL_MS}), "
                    f"{time.monotonic() - t:.1f}s until up")

    def do_query_edit(self, f: Fault, rng: random.Random) -> None:
        """A broken edit (refused; the previous version must keep running), then a working edit that
        means the same thing."""
        q = self.run_.queries_dir
        f.target = "sales_by_payment.sql"
        f.affected = list(range(PARTITIONS))
        path = q / "sales_by_payment.sql"
        original = path.read_text()
        broken = original.replace("SELECT", "SELEKT", 1)
        write_atomically(path, broken, self.run_.scratch)
        secs = rng.uniform(2.0, 6.0)
        time.sleep(secs)
        same = ("-- edited by the fault run: count(1) instead of count(*), same result\n" +
                original.replace("count(*) AS sales", "count(1) AS sales"))
        write_atomically(path, same, self.run_.scratch)
        f.detail = f"broken for {secs:.1f}s (SELEKT), then an equivalent edit (count(1))"

    def do_query_rename(self, f: Fault, rng: random.Random) -> None:
        q = self.run_.queries_dir
        candidates = ["sales_by_model.sql", "cars.sql", "sales_by_state.sql"]
        name = [c for c in candidates if (q / c).exists()][0]
        new = name.replace(".sql", f"_renamed{self.renames + 1}.sql")
        self.renames += 1
        os.rename(q / name, q / new)
        f.target = name
        f.affected = list(range(PARTITIONS))
        f.detail = f"renamed to {new}"


def write_atomically(path: Path, text: str, scratch: Path) -> None:
    tmp = scratch / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------
# the run


class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.repo = Path(args.repo).resolve()
        self.run_dir = Path(args.run_dir).resolve()
        self.rng = random.Random(args.seed)
        self.svc = Services(self.repo, args.kafka_port, args.hdfs_port, args.hdfs_http_port, args.influx_port)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%H%M%S")
        self.tag = f"faults-{args.seed}-{stamp}"
        self.topic = self.tag
        self.group = f"{self.tag}-group"
        self.db = self.tag.replace("-", "_")
        self.lake_dir = f"/{self.tag}"
        self.work = self.run_dir / "faults"
        self.logs = self.work / "logs"
        self.pids = self.run_dir / "pids"
        self.scratch = self.work / "scratch"
        self.queries_dir = self.work / "queries"
        for d in (self.logs, self.pids, self.scratch):
            d.mkdir(parents=True, exist_ok=True)
        self.abort = threading.Event()
        self.engines: list[Engine] = []
        self.gen_proc: subprocess.Popen | None = None

    # -- setup

    def setup(self) -> None:
        a = self.args
        shutil.copytree(self.repo / "queries", self.queries_dir)
        self.config = self.work / "carflow.toml"
        self.config.write_text(
            "# Written by benches/faults/faults.py; everything else comes from CARFLOW_* variables.\n"
            "[kafka.properties]\n"
            f'"max.poll.interval.ms" = "{MAX_POLL_INTERVAL_MS}"\n'
        )
        admin = AdminClient({"bootstrap.servers": self.svc.brokers, "log_level": 0})
        fs = admin.create_topics([NewTopic(self.topic, num_partitions=PARTITIONS, replication_factor=1)])
        for _, fut in fs.items():
            fut.result(60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            md = admin.list_topics(self.topic, timeout=10)
            t = md.topics.get(self.topic)
            if t and not t.error and len(t.partitions) == PARTITIONS and all(
                    pm.leader >= 0 for pm in t.partitions.values()):
                break
            time.sleep(0.5)
        self.svc.influxql(None, f'CREATE DATABASE "{self.db}"')
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARFLOW_")}
        env.update({
            "CARFLOW_SOURCE": "kafka",
            "CARFLOW_KAFKA_BROKERS": self.svc.brokers,
            "CARFLOW_KAFKA_TOPIC": self.topic,
            "CARFLOW_KAFKA_GROUP_ID": self.group,
            "CARFLOW_LAKE_ROOT": f"{self.svc.hdfs_url}{self.lake_dir}",
            "CARFLOW_INFLUX_URL": self.svc.influx_url,
            "CARFLOW_INFLUX_BUCKET": self.db,
            "CARFLOW_QUERIES_DIR": str(self.queries_dir),
            "CARFLOW_REFERENCE_DIR": str(self.repo / "reference"),
            "CARFLOW_BATCH_MAX_ROWS": str(a.batch_rows),
            "CARFLOW_BATCH_LINGER": a.batch_linger,
            "CARFLOW_LAKE_COMPACT_FILES": str(a.compact_files),
            "CARFLOW_LAKE_COMPACT_INTERVAL": a.compact_interval,
            "CARFLOW_LOG": os.environ.get("CARFLOW_FAULTS_ENGINE_LOG", "info"),
        })
        self.engine_env = env
        names = ["a", "b", "c", "d"][: a.engines]
        self.engines = [Engine(n, Path(a.carflow), self.config, env, self.logs, self.pids) for n in names]

    # -- main

    def execute(self) -> int:
        a = self.args
        t_wall0 = time.time()
        self.t0 = time.monotonic()
        self.setup()
        n_bad = a.malformed if a.malformed is not None else max(len(MALFORMED_KINDS), round(a.records * 0.01))
        n_late = a.late if a.late is not None else (12 if a.short else 60)
        duration = a.records / a.rate
        log(f"topic {self.topic} ({PARTITIONS} partitions), group {self.group}, lake {self.svc.hdfs_url}{self.lake_dir}, "
            f"influx db {self.db}; {a.records} generated + {n_bad} malformed + {n_late} very late records at "
            f"{a.rate:.0f}/s (~{duration:.0f}s of producing); {len(self.engines)} engines; carflow {a.carflow}")
        self.mon = Monitor(self.engines, self.topic, self.svc.brokers, self.t0)
        for e in self.engines:
            e.start()
        self.mon.start()
        # Both engines in the group before anything is produced (each owns partitions).
        self._wait_owned(90)

        gen_log = open(self.logs / "generate.log", "ab")
        gen_cmd = [a.carflow, "generate", "--topic", self.topic, "--brokers", self.svc.brokers,
                   "--count", str(a.records), "--seed", str(a.seed), "--rate", str(a.rate),
                   "--start", GENERATOR_START]
        self.gen_proc = subprocess.Popen(gen_cmd, env=self.engine_env, stdout=gen_log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        (self.pids / "generate.pid").write_text(str(self.gen_proc.pid))
        gen_done = threading.Event()
        t_prod0 = self.mon.now()
        injector = Injector(self.svc.brokers, self.topic, n_bad, n_late, duration, a.seed, gen_done)
        injector.start()
        kinds = a.faults.split(",") if a.faults else plan_faults(a.short, self.rng, a.kills)
        window = (t_prod0 + min(15.0, duration * 0.1), t_prod0 + duration * 0.85)
        runner = FaultRunner(self, kinds, window)
        runner.start()

        # Producing: bounded by the expected duration plus a margin.
        try:
            code = self.gen_proc.wait(timeout=duration * 3 + 600)
        except subprocess.TimeoutExpired:
            os.kill(self.gen_proc.pid, signal.SIGTERM)
            code = self.gen_proc.wait(30)
            log("carflow generate did not finish in time; stopped it")
        gen_done.set()
        t_prod1 = self.mon.now()
        gen_out = (self.logs / "generate.log").read_text(errors="replace").strip().splitlines()
        log(f"carflow generate exited {code}: {gen_out[-1] if gen_out else ''}")
        import re

        m = re.search(r"; (\d+) failed", gen_out[-1] if gen_out else "")
        gen_failed = int(m.group(1)) if m else None
        injector.done.wait(duration + 600)
        if injector.exc:
            raise HarnessError(f"injector: {injector.exc}")
        runner.done.wait(1800)
        if runner.exc:
            raise HarnessError(f"fault runner: {runner.exc}")
        log(f"produced in {t_prod1 - t_prod0:.0f}s; {len(runner.faults)} faults injected; waiting for the engines "
            f"to finish (at most {a.drain_timeout:.0f}s)")

        drained, t_drained, lag_seen = self._wait_drained(a.drain_timeout)
        exit_codes = {}
        for e in self.engines:
            exit_codes[e.name] = e.terminate(60)
        self.mon.close()
        log(f"engines stopped (SIGTERM): exit codes {exit_codes}")

        for f in runner.faults:
            f.recovery_s = self._recovery(f)

        results = self.verify(runner.faults, n_bad, n_late, injector)
        results.update({
            "drained": drained,
            "drain_s": round(t_drained - t_prod1, 1) if drained else None,
            "produce_s": round(t_prod1 - t_prod0, 1),
            "generate_exit": code,
            "generate_failed_deliveries": gen_failed,
            "injector_failed_deliveries": injector.failed,
            "engine_exit_codes": exit_codes,
            "unexpected_engine_exits": self.mon.unexpected_exits,
            "engine_starts": {e.name: e.starts for e in self.engines},
            "wall_s": round(time.time() - t_wall0, 1),
        })
        return self.report(results, runner.faults, injector)

    def _wait_owned(self, timeout: float) -> None:
        """Until every engine is a member of the group with partitions assigned (Kafka's view)."""
        admin = AdminClient({"bootstrap.servers": self.svc.brokers, "log_level": 0})
        deadline = time.monotonic() + timeout
        members: list = []
        while time.monotonic() < deadline:
            for e in self.engines:
                if not e.running():
                    raise HarnessError(f"engine {e.name} exited at start:\n{e.log_tail()}")
            try:
                g = admin.describe_consumer_groups([self.group])[self.group].result(10)
                members = [sorted(tp.partition for tp in m.assignment.topic_partitions) for m in g.members]
            except Exception:
                members = []
            if len(members) == len(self.engines) and all(members) and all(e.health() for e in self.engines):
                log(f"engines in the group, partitions per member: {members}")
                return
            time.sleep(0.5)
        raise HarnessError(f"the engines did not all get partitions within {timeout:.0f}s: {members}\n"
                           + "\n".join(e.log_tail(10) for e in self.engines))

    def _group_offsets(self, admin: AdminClient) -> dict[int, int]:
        req = [ConsumerGroupTopicPartitions(self.group, [TopicPartition(self.topic, p) for p in range(PARTITIONS)])]
        fut = admin.list_consumer_group_offsets(req)[self.group]
        res = fut.result(15)
        return {tp.partition: tp.offset for tp in res.topic_partitions}

    def _end_offsets(self) -> list[int]:
        c = Consumer({"bootstrap.servers": self.svc.brokers, "group.id": "faults-ends", "log_level": 0})
        try:
            return [c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15, cached=False)[1]
                    for p in range(PARTITIONS)]
        finally:
            c.close()

    def _wait_drained(self, timeout: float) -> tuple[bool, float, dict]:
        """Until the group's committed offsets are the end offsets and the engines report every
        partition processed to its end."""
        admin = AdminClient({"bootstrap.servers": self.svc.brokers, "log_level": 0})
        deadline = time.monotonic() + timeout
        ends = self._end_offsets()
        last = {}
        next_note = time.monotonic() + 30
        last_total, last_move = -1, time.monotonic()
        while time.monotonic() < deadline:
            try:
                committed = self._group_offsets(admin)
            except Exception:
                committed = {}
            processed = self.mon.processed_all()
            last = {"ends": ends, "committed": committed, "processed": processed}
            if all(committed.get(p, -1) == ends[p] for p in range(PARTITIONS)) and all(
                    processed[p] >= ends[p] for p in range(PARTITIONS)):
                log(f"drained: committed = processed = end offsets {ends}")
                return True, self.mon.now(), last
            total = sum(processed)
            if total != last_total:
                last_total, last_move = total, time.monotonic()
            elif time.monotonic() - last_move > self.args.stall_timeout:
                log(f"STUCK: no partition processed further for {self.args.stall_timeout:.0f}s: {last}")
                for e in self.engines:
                    log(f"engine {e.name}: health {e.health(2)}")
                return False, self.mon.now(), last
            if time.monotonic() > next_note:
                behind = sum(ends) - sum(min(processed[p], ends[p]) for p in range(PARTITIONS))
                log(f"  {behind} records not processed yet; committed {committed}; health problems seen: "
                    f"{dict(self.mon.problems.most_common(2))}")
                next_note = time.monotonic() + 30
            time.sleep(1.0)
        log(f"NOT drained after {timeout:.0f}s: {last}")
        return False, self.mon.now(), last

    def _recovery(self, f: Fault) -> float | None:
        """Time from the fault's end until every affected partition that had records waiting then
        was processed further (from the engines' /health)."""
        if f.error or not f.pending:
            return None
        worst = 0.0
        for p in f.pending:
            t = self.mon.first_progress_after(p, f.end, f.snapshot[p])
            if t is None:
                return float("inf")
            worst = max(worst, t - f.end)
        return round(worst, 2)

    # -- verification

    def verify(self, faults: list[Fault], n_bad: int, n_late: int, injector: Injector) -> dict:
        res: dict = {}
        log("verifying: reading the topic back")
        truth = self._read_topic()
        res["records"] = len(truth["partition"])
        admin = AdminClient({"bootstrap.servers": self.svc.brokers, "log_level": 0})
        ends = self._end_offsets()
        try:
            committed = self._group_offsets(admin)
        except Exception as e:
            committed = {}
            res["lag_error"] = str(e)
        lag = {p: ends[p] - committed.get(p, 0) if committed.get(p, -1) >= 0 else ends[p] for p in range(PARTITIONS)}
        res["consumer_lag"] = sum(lag.values())
        res["consumer_lag_by_partition"] = lag

        log("verifying: copying the lake back from HDFS")
        local = self.work / "lake"
        if local.exists():
            shutil.rmtree(local)
        r = self.svc.sh("fs", "-get", self.lake_dir, str(local), timeout=1800, check=False)
        if r.returncode != 0:
            raise HarnessError(f"fs -get {self.lake_dir} failed:\n{r.stderr[-2000:]}")
        staging = [str(p.relative_to(local)) for p in (local / "_carflow/staging").rglob("*") if p.is_file()] \
            if (local / "_carflow/staging").exists() else []
        stray = [str(p.relative_to(local)) for ds in ("cars", "dead_letters") if (local / ds).exists()
                 for p in (local / ds).rglob("*") if p.is_file() and not p.name.endswith(".parquet")]
        res["staging_leftovers"] = len(staging)
        res["staging_examples"] = staging[:10]
        res["stray_files"] = len(stray)
        res["stray_examples"] = stray[:10]
        res["lake_files"] = sum(1 for _ in local.rglob("*.parquet"))

        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("truth_arrow", pa.table(truth))
        con.execute("CREATE TABLE truth AS SELECT * FROM truth_arrow")
        cars_glob = str(local / "cars" / "**" / "*.parquet")
        dl_glob = str(local / "dead_letters" / "**" / "*.parquet")
        has_cars = (local / "cars").exists()
        has_dl = (local / "dead_letters").exists()
        if has_cars:
            con.execute(f"CREATE VIEW cars AS SELECT * FROM read_parquet('{cars_glob}', hive_partitioning = true, "
                        "union_by_name = true)")
        else:
            con.execute("CREATE VIEW cars AS SELECT NULL::INT AS _partition, NULL::BIGINT AS _offset, "
                        "NULL::VARCHAR AS transaction_id, NULL::TIMESTAMPTZ AS sold_at WHERE false")
        if has_dl:
            con.execute(f"CREATE VIEW dead_letters AS SELECT * FROM read_parquet('{dl_glob}', hive_partitioning = true, "
                        "union_by_name = true)")
        else:
            con.execute("CREATE VIEW dead_letters AS SELECT NULL::VARCHAR AS topic, NULL::INT AS partition, "
                        "NULL::BIGINT AS \"offset\", NULL::VARCHAR AS reason WHERE false")
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        res["lake_rows"] = q("SELECT count(*) FROM cars")[0][0]
        res["dead_letter_rows"] = q("SELECT count(*) FROM dead_letters")[0][0]
        con.execute("""CREATE TABLE seen AS
            SELECT p, o, sum(nc)::BIGINT AS nc, sum(nd)::BIGINT AS nd FROM (
              SELECT _partition AS p, _offset AS o, 1 AS nc, 0 AS nd FROM cars
              UNION ALL
              SELECT "partition", "offset", 0, 1 FROM dead_letters) GROUP BY ALL""")
        # Missing below the group's committed offset (Kafka was told it is done) or below what an engine
        # reported processed on /health: lost. Beyond both: not processed (the engines stopped short;
        # still in Kafka, but not in the lake either).
        reported = self.mon.processed_all()
        con.execute("CREATE TABLE committed (p INTEGER, c BIGINT, r BIGINT)")
        for p_ in range(PARTITIONS):
            c_ = committed.get(p_, -1)
            con.execute("INSERT INTO committed VALUES (?, ?, ?)", [p_, max(c_, 0), reported[p_]])
        con.execute("""CREATE TABLE missing AS
                       SELECT t.*, t.offset < coalesce(c.c, 0) OR t.offset < coalesce(c.r, 0) AS below_commit,
                              t.offset < coalesce(c.c, 0) AS below_kafka_commit
                       FROM truth t
                       ANTI JOIN seen s ON t.partition = s.p AND t.offset = s.o
                       LEFT JOIN committed c ON c.p = t.partition""")
        res["lost"] = q("SELECT count(*) FROM missing WHERE below_commit")[0][0]
        res["lost_below_kafka_commit"] = q("SELECT count(*) FROM missing WHERE below_kafka_commit")[0][0]
        res["unprocessed"] = q("SELECT count(*) FROM missing WHERE NOT below_commit")[0][0]
        res["duplicated"] = q("SELECT coalesce(sum(nc + nd - 1), 0) FROM seen WHERE nc + nd > 1")[0][0]
        res["duplicated_in_lake"] = q("SELECT coalesce(sum(nc - 1), 0) FROM seen WHERE nc > 1")[0][0]
        res["duplicated_in_dead_letters"] = q("SELECT coalesce(sum(nd - 1), 0) FROM seen WHERE nd > 1")[0][0]
        res["in_both"] = q("SELECT count(*) FROM seen WHERE nc > 0 AND nd > 0")[0][0]
        res["phantom"] = q("SELECT count(*) FROM seen s ANTI JOIN truth t ON t.partition = s.p AND t.offset = s.o")[0][0]
        res["lost_examples"] = q('SELECT partition, "offset", kind FROM missing WHERE below_commit ORDER BY 1, 2 LIMIT 10')
        res["lost_by_partition"] = dict(q("SELECT partition, count(*) FROM missing WHERE below_commit GROUP BY 1 ORDER BY 1"))
        res["duplicated_examples"] = q("SELECT p, o, nc, nd FROM seen WHERE nc + nd > 1 ORDER BY 1, 2 LIMIT 10")
        dup_by_part = q("SELECT p, sum(nc + nd - 1) FROM seen WHERE nc + nd > 1 GROUP BY 1 ORDER BY 1")
        res["duplicated_by_partition"] = {int(p): int(n) for p, n in dup_by_part}
        # Contiguous ranges (in the topic's order) of lost, not processed and duplicated records, each
        # with the time the engines reported its first offset processed: which fault it belongs to.
        # Numbered separately for malformed and valid records, so that a range of valid records missing
        # from the lake is one range even with dead letters (which are there) in between.
        con.execute("CREATE TABLE truth_rn AS SELECT *, row_number() OVER (PARTITION BY partition, kind = 'bad' "
                    "ORDER BY \"offset\") AS rn FROM truth")

        def ranges(where: str) -> list[dict]:
            rows = q(f"""SELECT partition, min("offset"), max("offset"), count(*) FROM (
                           SELECT t.partition, t."offset", t.kind = 'bad' AS bad,
                                  t.rn - row_number() OVER (PARTITION BY t.partition, t.kind = 'bad' ORDER BY t.rn) AS g
                           FROM truth_rn t WHERE {where}) GROUP BY partition, bad, g ORDER BY 4 DESC LIMIT 40""")
            out = []
            for p_, first, last, n in rows:
                at = self.mon.first_progress_after(int(p_), 0.0, int(first))
                out.append({"partition": int(p_), "first": int(first), "last": int(last), "records": int(n),
                            "processed_at_s": None if at is None else round(at, 1)})
            return out

        res["lost_ranges"] = ranges("EXISTS (SELECT 1 FROM missing m WHERE m.partition = t.partition AND "
                                    "m.offset = t.offset AND m.below_commit)") if res["lost"] else []
        res["unprocessed_ranges"] = ranges("EXISTS (SELECT 1 FROM missing m WHERE m.partition = t.partition AND "
                                           "m.offset = t.offset AND NOT m.below_commit)") if res["unprocessed"] else []
        res["duplicated_ranges"] = ranges("EXISTS (SELECT 1 FROM seen s WHERE s.p = t.partition AND s.o = t.offset "
                                          "AND s.nc + s.nd > 1)") if res["duplicated"] else []
        res["duplicate_transaction_ids"] = q("SELECT count(*) - count(DISTINCT transaction_id) FROM cars")[0][0]
        # Routing: malformed → dead letters (with a reason), good and very late → the lake.
        res["malformed_in_lake"] = q("SELECT count(*) FROM truth t JOIN seen s ON t.partition = s.p AND t.offset = s.o "
                                     "WHERE t.kind = 'bad' AND s.nc > 0")[0][0]
        res["malformed_in_lake_by_kind"] = dict(q(
            "SELECT t.bad_kind, count(*) FROM truth t JOIN seen s ON t.partition = s.p AND t.offset = s.o "
            "WHERE t.kind = 'bad' AND s.nc > 0 GROUP BY 1 ORDER BY 1"))
        res["good_in_dead_letters"] = q("SELECT count(*) FROM truth t JOIN seen s ON t.partition = s.p AND t.offset = s.o "
                                        "WHERE t.kind <> 'bad' AND s.nd > 0")[0][0]
        res["good_in_dead_letters_examples"] = q(
            "SELECT d.partition, d.offset, d.reason FROM dead_letters d JOIN truth t "
            "ON t.partition = d.partition AND t.offset = d.offset WHERE t.kind <> 'bad' LIMIT 5")
        res["dead_letters_without_reason"] = q(
            "SELECT count(*) FROM dead_letters WHERE reason IS NULL OR trim(reason) = ''")[0][0]
        res["dead_letters_wrong_origin"] = q(
            f"SELECT count(*) FROM dead_letters WHERE topic IS DISTINCT FROM '{self.topic}'")[0][0]
        res["dead_letter_reasons"] = {k: v for k, v in q(
            "SELECT t.bad_kind || ': ' || any_value(d.reason), count(*) FROM dead_letters d JOIN truth t "
            "ON t.partition = d.partition AND t.offset = d.offset WHERE t.kind = 'bad' GROUP BY t.bad_kind ORDER BY 1")}
        res["malformed"] = q("SELECT count(*) FROM truth WHERE kind = 'bad'")[0][0]
        res["late"] = q("SELECT count(*) FROM truth WHERE kind = 'late'")[0][0]
        res["late_in_lake"] = q("SELECT count(*) FROM truth t JOIN seen s ON t.partition = s.p AND t.offset = s.o "
                                "WHERE t.kind = 'late' AND s.nc > 0")[0][0]

        log("verifying: InfluxDB points against the lake's aggregates")
        res.update(self._check_points(con))
        con.close()
        return res

    def _read_topic(self) -> dict[str, list]:
        """Every message of the topic: partition, offset, and what it is (by the injector's keys)."""
        ends = self._end_offsets()
        c = Consumer({"bootstrap.servers": self.svc.brokers, "group.id": "faults-verify", "enable.auto.commit": False,
                      "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 10485760, "log_level": 0})
        out: dict[str, list] = {"partition": [], "offset": [], "kind": [], "bad_kind": []}
        todo = {p for p in range(PARTITIONS) if ends[p] > 0}
        c.assign([TopicPartition(self.topic, p, 0) for p in todo])
        deadline = time.monotonic() + 900
        try:
            while todo and time.monotonic() < deadline:
                for m in c.consume(10000, 1.0):
                    if m.error():
                        continue
                    p, o = m.partition(), m.offset()
                    if p not in todo:
                        continue
                    k = m.key() or b""
                    if k.startswith(b"faults-bad-"):
                        kind, bad = "bad", k.decode().split("-")[2]
                    elif k.startswith(b"faults-late-"):
                        kind, bad = "late", None
                    else:
                        kind, bad = "good", None
                    out["partition"].append(p)
                    out["offset"].append(o)
                    out["kind"].append(kind)
                    out["bad_kind"].append(bad)
                    if o + 1 >= ends[p]:
                        todo.discard(p)
        finally:
            c.close()
        if todo:
            raise HarnessError(f"could not read partitions {sorted(todo)} of {self.topic} to their end")
        return out

    def _influx_points(self, measurement: str, tags: list[str], fields: list[str]) -> dict:
        docs = self.svc.influxql(self.db, f'SELECT * FROM "{measurement}"', chunked=True)
        pts: dict = {}
        for doc in docs:
            for res in doc.get("results", []):
                for s in res.get("series", []) or []:
                    cols = s["columns"]
                    idx = {c: i for i, c in enumerate(cols)}
                    for row in s["values"]:
                        key = (row[idx["time"]],) + tuple(row[idx[t]] if t in idx else None for t in tags)
                        pts[key] = {f: row[idx[f]] for f in fields if f in idx}
        return pts

    def _check_points(self, con) -> dict:
        con.execute("""CREATE VIEW ok AS SELECT c.* FROM cars c
                       ANTI JOIN (SELECT partition, "offset" FROM truth WHERE kind = 'late') l
                       ON c._partition = l.partition AND c._offset = l.offset""")
        # Duplicated lake rows would double-count in the expected points too: count each
        # (partition, offset) once so the points are checked against the topic, not the lake's errors.
        con.execute("""CREATE VIEW ok1 AS SELECT * FROM ok QUALIFY row_number() OVER (PARTITION BY _partition, _offset) = 1""")
        shown = self.svc.influxql(self.db, "SHOW MEASUREMENTS")
        measurements = sorted({v[0] for d in shown for r in d.get("results", []) for s in r.get("series", []) or []
                               for v in s["values"]})
        out = {"points_expected": 0, "points_in_influx": 0, "wrong_points": 0, "wrong_by_measurement": {},
               "wrong_by_class": collections.Counter(), "wrong_examples": [],
               "wrong_explained_by_partition_subset": 0, "measurements_in_influx": measurements}
        expected_names = {m for m, *_ in INFLUX_QUERIES}
        # carflow_engine: the engine's own telemetry (the "carflow engine" Grafana dashboard).
        unexpected_measurements = [m for m in measurements if m not in expected_names and m != "carflow_engine"]
        out["unexpected_measurements"] = unexpected_measurements
        for name, tags, fields, sql in INFLUX_QUERIES:
            sql1 = sql.replace("FROM ok", "FROM ok1").replace("REFERENCE_DIR", str(self.repo / "reference"))
            rows = con.execute(sql1).fetchall()
            exp = {}
            for r in rows:
                key = (int(r[0]),) + tuple(r[1:1 + len(tags)])
                exp[key] = {f: (float(v) if v is not None else None) for f, v in zip(fields, r[1 + len(tags):])}
            act = self._influx_points(name, tags, fields)
            window_values = {}
            if any(f in APPROX_FIELDS for f in fields):
                window_values = {(int(t), c): v for t, c, v in con.execute(PERCENTILE_VALUES_SQL).fetchall()}
            # Per-partition counts and sums for the points that differ: is a point the aggregate of a
            # subset of the partitions (one engine's share, last writer wins)?
            wrong = []
            classes = collections.Counter()
            for k, e in exp.items():
                a = act.get(k)
                if a is None:
                    classes["missing"] += 1
                    wrong.append((k, "missing", e, None))
                    continue
                bad = []
                for f in fields:
                    ev, av = e.get(f), a.get(f)
                    if ev is None and av is None:
                        continue
                    if ev is None or av is None:
                        bad.append(f)
                        continue
                    av = float(av)
                    if f in EXACT_FIELDS:
                        ok = abs(av - ev) <= 1e-9 * max(1.0, abs(ev))
                    elif f in APPROX_FIELDS:
                        ok = percentile_ok(av, ev, APPROX_FIELDS[f], window_values.get(k))
                    else:
                        ok = abs(av - ev) <= 1e-9 * abs(ev) + 2e-6
                    if not ok:
                        bad.append(f)
                if bad:
                    es, as_ = e.get("sales"), a.get("sales")
                    cls = ("count_low" if as_ < es else "count_high" if as_ > es else "values") \
                        if es is not None and as_ is not None else "values"
                    classes[cls] += 1
                    wrong.append((k, cls, e, a, bad))
            for k in act.keys() - exp.keys():
                classes["unexpected"] += 1
                wrong.append((k, "unexpected", None, act[k]))
            out["points_expected"] += len(exp)
            out["points_in_influx"] += len(act)
            out["wrong_points"] += len(wrong)
            out["wrong_by_measurement"][name] = {"expected": len(exp), "in_influx": len(act), "wrong": len(wrong),
                                                 **dict(classes)}
            out["wrong_by_class"].update(classes)
            if wrong:
                out["wrong_explained_by_partition_subset"] += self._explain_subsets(con, name, tags, fields, sql, wrong)
                shown_per_class: collections.Counter = collections.Counter()
                for w in wrong:
                    shown_per_class[w[1]] += 1
                    if shown_per_class[w[1]] > 2:
                        continue
                    out["wrong_examples"].append({
                        "measurement": name,
                        "time": dt.datetime.fromtimestamp(w[0][0] / 1000, dt.timezone.utc).isoformat(),
                        "tags": dict(zip(tags, w[0][1:])), "class": w[1], "expected": w[2], "influx": w[3],
                        **({"fields": w[4]} if len(w) > 4 else {}),
                    })
        out["wrong_by_class"] = dict(out["wrong_by_class"])
        return out

    def _explain_subsets(self, con, name, tags, fields, sql, wrong) -> int:
        """How many count_low points equal (sales and revenue) the aggregate over a proper subset of
        the partitions: what two engines writing their own partitions' aggregates (last writer wins)
        leave behind, as opposed to rows missing from a window."""
        low = [w for w in wrong if w[1] == "count_low" and w[3] is not None]
        if not low or "revenue" not in fields:
            return 0
        per_part_sql = sql.replace("FROM ok", "FROM ok1").replace(
            "REFERENCE_DIR", str(self.repo / "reference")).replace(
            "count(*) AS sales", "_partition AS part, count(*) AS sales")
        # Keep only the grouping columns and the two fields compared.
        cur = con.execute(per_part_sql)
        cols = [d[0] for d in cur.description]
        ti, pi, si, ri = cols.index("t"), cols.index("part"), cols.index("sales"), cols.index("revenue")
        tag_i = [cols.index(t) for t in tags]
        by_key: dict = collections.defaultdict(dict)
        want = {w[0] for w in low}
        for r in cur.fetchall():
            k = (int(r[ti]),) + tuple(r[i] for i in tag_i)
            if k in want:
                by_key[k][int(r[pi])] = (int(r[si]), float(r[ri]))
        n = 0
        for k, cls, e, a, *_ in low:
            parts = by_key.get(k, {})
            target_s, target_r = float(a["sales"]), float(a.get("revenue") or 0.0)
            items = list(parts.values())
            found = False
            for size in range(1, len(items)):
                for combo in itertools.combinations(items, size):
                    if sum(c[0] for c in combo) == target_s and abs(sum(c[1] for c in combo) - target_r) <= 1e-6 * max(1, target_r) + 0.01:
                        found = True
                        break
                if found:
                    break
            n += found
        return n

    # -- report

    def report(self, res: dict, faults: list[Fault], injector: Injector) -> int:
        a = self.args
        kinds = collections.Counter(f.kind for f in faults if not f.error)
        failed_faults = [f"{f.kind}: {f.error}" for f in faults if f.error]
        rec_by_kind: dict[str, list[float]] = collections.defaultdict(list)
        not_recovered = []
        for f in faults:
            if f.recovery_s is None:
                continue
            if f.recovery_s == float("inf"):
                not_recovered.append(f.kind)
                continue
            rec_by_kind[f.kind].append(f.recovery_s)
        all_rec = [x for v in rec_by_kind.values() for x in v]

        def pmax(xs):
            if not xs:
                return {"p50": None, "max": None, "n": 0}
            return {"p50": round(statistics.median(xs), 2), "max": round(max(xs), 2), "n": len(xs)}

        recovery = {k: pmax(v) for k, v in sorted(rec_by_kind.items())}
        recovery["all"] = pmax(all_rec)
        metrics_sum: collections.Counter = collections.Counter()
        for e in self.engines:
            for m in e.metrics_by_start:
                for k in ("carflow_records_in_total", "carflow_dead_letters_total", "carflow_late_rows_total",
                          "carflow_replayed_total", "carflow_batches_total", "carflow_query_errors_total",
                          "carflow_windows_closed_early_total", "carflow_influx_rejected_total",
                          "carflow_lake_merges_total", "carflow_lake_files_merged_total",
                          "carflow_lake_commits_overlapped_total", "carflow_lake_commits_fenced_total"):
                    metrics_sum[k] += m.get(k, 0)
        peak_rss_mb = round(self.mon.peak_rss_kb / 1024, 1)
        checks = {
            "lost": res["lost"] == 0,
            "unprocessed": res["unprocessed"] == 0,
            "duplicated": res["duplicated"] == 0,
            "phantom rows": res["phantom"] == 0,
            "duplicate transaction ids": res["duplicate_transaction_ids"] == 0,
            "malformed in the lake": res["malformed_in_lake"] == 0,
            "good records in dead letters": res["good_in_dead_letters"] == 0,
            "dead letters without reason": res["dead_letters_without_reason"] == 0,
            "dead letters with wrong origin": res["dead_letters_wrong_origin"] == 0,
            "wrong points": res["wrong_points"] == 0,
            "unexpected measurements": not res["unexpected_measurements"],
            "staging leftovers": res["staging_leftovers"] == 0,
            "stray files in datasets": res["stray_files"] == 0,
            "consumer lag": res["consumer_lag"] == 0,
            "drained": res["drained"],
            "recovered after every fault": not not_recovered,
            "faults injected": not failed_faults,
            "engines exited cleanly on SIGTERM": all(c == 0 for c in res["engine_exit_codes"].values()),
            "no engine exited by itself": not res["unexpected_engine_exits"],
        }
        failed = [k for k, ok in checks.items() if not ok]
        try:
            rev = subprocess.run(["git", "-C", str(self.repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip()
        except OSError:
            rev = "?"
        import hashlib

        h = hashlib.sha256()
        with open(a.carflow, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        built = dt.datetime.fromtimestamp(os.stat(a.carflow).st_mtime, dt.timezone.utc).isoformat(timespec="minutes")
        doc = {
            "records": res["records"],
            "faults": dict(sorted(kinds.items())),
            "lost": res["lost"],
            "duplicated": res["duplicated"],
            "wrong_points": res["wrong_points"],
            "recovery_s": recovery,
            "peak_rss_mb": peak_rss_mb,
            "passed": not failed,
            "failed_checks": failed,
            "seed": a.seed,
            "short": a.short,
            "generated": a.records,
            "malformed": res["malformed"],
            "very_late": res["late"],
            "rate": a.rate,
            "engines": len(self.engines),
            "batch_max_rows": a.batch_rows,
            "batch_linger": a.batch_linger,
            "compact_files": a.compact_files,
            "compact_interval": a.compact_interval,
            "carflow": str(a.carflow),
            "harness_git": rev,
            "carflow_sha256": h.hexdigest()[:16],
            "carflow_built": built,
            "carflow_label": a.label,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "fault_log": [{"kind": f.kind, "target": f.target, "detail": f.detail, "start_s": round(f.start, 1),
                           "end_s": round(f.end, 1), "affected_partitions": f.affected,
                           "recovery_s": (None if f.recovery_s is None else
                                          ("never" if f.recovery_s == float("inf") else f.recovery_s)),
                           **({"error": f.error} if f.error else {})} for f in faults],
            "engine_metrics_sum_over_processes": dict(metrics_sum),
            "peak_rss_mb_by_engine": {k: round(v / 1024, 1) for k, v in self.mon.rss_by_engine.items()},
            "health_problems_seen": dict(self.mon.problems.most_common(10)),
            **{k: v for k, v in res.items() if k not in ("records", "lost", "duplicated", "wrong_points")},
        }
        text = self.render(doc, recovery, failed)
        print(text, flush=True)
        out_dir = Path(a.results_dir) / dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
        out_dir.mkdir(parents=True, exist_ok=True)
        base = out_dir / f"faults-{a.records}-{dt.datetime.now(dt.timezone.utc).strftime('%H%M%S')}"
        base.with_suffix(".txt").write_text(text + "\n")
        base.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
        log(f"wrote {base}.txt and .json")
        return 0 if not failed else 1

    def render(self, d: dict, recovery: dict, failed: list[str]) -> str:
        def fmt(x):
            return "-" if x is None else f"{x:.1f}s"

        lines = [
            f"carflow fault run: seed {d['seed']}{' (--short)' if d['short'] else ''}, {d['engines']} engines in one group, "
            f"batches of {d['batch_max_rows']} rows / {d['batch_linger']}, {d['date']}",
            f"  carflow {d['carflow']} ({d['carflow_label'] + ', ' if d['carflow_label'] else ''}built "
            f"{d['carflow_built']}, sha256 {d['carflow_sha256']}); harness at git {d['harness_git']}",
            f"  {d['records']:,} records in a 6-partition topic: {d['generated']:,} generated (carflow generate, "
            f"{d['rate']:.0f}/s), {d['malformed']:,} malformed, {d['very_late']} very late (6 h behind)",
            "",
            f"  {'fault':<16} {'count':>5} {'recovery p50':>13} {'max':>8}",
        ]
        for k, n in d["faults"].items():
            r = recovery.get(k, {})
            lines.append(f"  {k:<16} {n:>5} {fmt(r.get('p50')):>13} {fmt(r.get('max')):>8}")
        r = recovery["all"]
        lines.append(f"  {'all':<16} {sum(d['faults'].values()):>5} {fmt(r.get('p50')):>13} {fmt(r.get('max')):>8}")
        wc = d["wrong_by_class"]
        lines += [
            "",
            f"  {'records':<34} {d['records']:>12,}",
            f"  {'lost':<34} {d['lost']:>12,}   (missing below the committed offset, {d['lost_below_kafka_commit']:,}, or below"
            " what /health reported processed)",
            f"  {'not processed':<34} {d['unprocessed']:>12,}   (missing beyond both: the engines stopped short)",
            f"  {'duplicated':<34} {d['duplicated']:>12,}"
            + (f"   (lake {d['duplicated_in_lake']:,}, dead letters {d['duplicated_in_dead_letters']:,}, both {d['in_both']:,})"
               if d["duplicated"] else ""),
            f"  {'malformed → dead letters':<34} {d['malformed'] - d['malformed_in_lake']:>12,} of {d['malformed']:,}"
            f" (all with reason: {'yes' if d['dead_letters_without_reason'] == 0 else 'NO'})",
            f"  {'good records in dead letters':<34} {d['good_in_dead_letters']:>12,}",
            f"  {'very late rows in the lake':<34} {d['late_in_lake']:>12,} of {d['very_late']}",
            f"  {'wrong points':<34} {d['wrong_points']:>12,} of {d['points_expected']:,} expected"
            + (f" ({', '.join(f'{k} {v:,}' for k, v in sorted(wc.items()))}; "
               f"{d['wrong_explained_by_partition_subset']:,} equal to a subset of partitions)" if wc else ""),
            f"  {'late rows counted by the engines':<34} {int(d['engine_metrics_sum_over_processes'].get('carflow_late_rows_total', 0)):>12,}"
            f"   (carflow_late_rows_total summed over engine processes, approximate; {d['very_late']} injected)",
            f"  {'staging leftovers':<34} {d['staging_leftovers']:>12,}",
            f"  {'lake files':<34} {d['lake_files']:>12,}   (merges of small files seen in engine metrics: "
            f"{int(d['engine_metrics_sum_over_processes'].get('carflow_lake_merges_total', 0)):,}, replacing "
            f"{int(d['engine_metrics_sum_over_processes'].get('carflow_lake_files_merged_total', 0)):,} files; "
            f"lake.compact_files {d.get('compact_files')}, every {d.get('compact_interval')})",
            f"  {'commits in the background':<34} "
            f"{int(d['engine_metrics_sum_over_processes'].get('carflow_lake_commits_overlapped_total', 0)):>12,}"
            f"   (of {int(d['engine_metrics_sum_over_processes'].get('carflow_batches_total', 0)):,} batches; only while an engine "
            f"is alone and behind; partition commits fenced: "
            f"{int(d['engine_metrics_sum_over_processes'].get('carflow_lake_commits_fenced_total', 0)):,})",
            f"  {'consumer-group lag':<34} {d['consumer_lag']:>12,}",
            f"  {'peak RSS per engine':<34} {d['peak_rss_mb']:>10,.0f} MB",
            f"  {'drained after producing':<34} {fmt(d['drain_s']):>12}   (producing took {d['produce_s']:.0f}s, "
            f"whole run {d['wall_s']:.0f}s)",
        ]
        for what in ("lost_ranges", "unprocessed_ranges", "duplicated_ranges"):
            rs = d.get(what) or []
            if not rs:
                continue
            lines.append(f"  {what.replace('_', ' ')} (largest first):")
            for r in rs[:6]:
                at = r["processed_at_s"]
                before = [f for f in d["fault_log"] if at is not None and f["start_s"] <= at]
                lines.append(f"    partition {r['partition']} offsets {r['first']}–{r['last']}: {r['records']:,} records, "
                             f"reported processed at {at if at is not None else '?'}s"
                             + (f" (last fault before: {before[-1]['kind']} at {before[-1]['start_s']}s)" if before else ""))
        if d["generate_failed_deliveries"] or d["injector_failed_deliveries"]:
            lines.append(f"  note: the producers could not deliver {d['generate_failed_deliveries']} generated and "
                         f"{d['injector_failed_deliveries']} injected records (not in the topic, not counted)")
        if d["unexpected_engine_exits"]:
            lines.append(f"  engines exited by themselves: {d['unexpected_engine_exits']}")
        lines += ["", "  faults in order:"]
        for f in d["fault_log"]:
            lines.append(f"    {f['start_s']:>7.1f}s {f['kind']:<15} {f['target']:<20} {f['detail']}"
                         f"  → recovery {f['recovery_s'] if f['recovery_s'] is not None else 'n/a (nothing was waiting)'}"
                         + (f"  ERROR {f['error']}" if 'error' in f else ""))
        lines.append("")
        lines.append("  verdict: " + ("PASS" if not failed else "FAIL: " + ", ".join(failed)))
        return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", required=True)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--carflow", required=True, help="the carflow binary")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--label", default="", help="what the binary is, for the report (e.g. 'release, 99e8197')")
    ap.add_argument("--short", action="store_true", help="~100k records, 4 faults of 3 kinds (CI)")
    ap.add_argument("--records", type=int, help="generated transactions (default 1,000,000; --short 100,000)")
    ap.add_argument("--rate", type=float, help="generated transactions per second (default: records over ~"
                                               "800 s, --short ~150 s)")
    ap.add_argument("--malformed", type=int, help="malformed records (default 1%% of --records)")
    ap.add_argument("--late", type=int, help="very late records (default 60, --short 12)")
    ap.add_argument("--kills", type=int, default=12, help="kill -9 faults in the full run (default 12)")
    ap.add_argument("--faults", help="inject exactly these, in this order (comma-separated: " + ", ".join(FAULT_KINDS)
                    + "), e.g. to reproduce one defect")
    ap.add_argument("--engines", type=int, default=2, choices=[1, 2, 3, 4])
    ap.add_argument("--batch-rows", type=int, default=20000)
    ap.add_argument("--batch-linger", default="500ms")
    ap.add_argument("--compact-files", type=int, default=8,
                    help="lake.compact_files of the engines: merges of small files happen under the faults (default 8)")
    ap.add_argument("--compact-interval", default="10s", help="lake.compact_interval of the engines (default 10s)")
    ap.add_argument("--drain-timeout", type=float, help="seconds the engines get to finish after producing "
                                                        "(default 1200, --short 600)")
    ap.add_argument("--stall-timeout", type=float, default=240.0,
                    help="give up waiting when no partition was processed further for this long (default 240 s)")
    ap.add_argument("--results-dir", help="default <repo>/benches/results")
    ap.add_argument("--kafka-port", type=int, required=True)
    ap.add_argument("--hdfs-port", type=int, required=True)
    ap.add_argument("--hdfs-http-port", type=int, required=True)
    ap.add_argument("--influx-port", type=int, required=True)
    a = ap.parse_args()
    for k in (a.faults or "").split(","):
        if k and k not in FAULT_KINDS:
            ap.error(f"--faults: unknown fault {k!r} (known: {', '.join(FAULT_KINDS)})")
    if a.records is None:
        a.records = 100_000 if a.short else 1_000_000
    if a.rate is None:
        # Long enough for every fault (and its recovery) to fall while records are still coming in.
        a.rate = a.records / (150.0 if a.short else 800.0)
    if a.drain_timeout is None:
        a.drain_timeout = 600.0 if a.short else 1200.0
    if a.results_dir is None:
        a.results_dir = str(Path(a.repo) / "benches" / "results")
    run = Run(a)
    try:
        return run.execute()
    except HarnessError as e:
        log(f"HARNESS ERROR: {e}")
        return 2
    except Exception:
        log(f"HARNESS ERROR:\n{traceback.format_exc()}")
        return 2
    finally:
        run.abort.set()
        for e in run.engines:
            if e.running():
                if e.stopped:
                    e.sigcont()
                e.kill9()
        if run.gen_proc and run.gen_proc.poll() is None:
            run.gen_proc.kill()


if __name__ == "__main__":
    sys.exit(main())
