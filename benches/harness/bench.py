#!/usr/bin/env python3
"""carflow end-to-end benchmark, side by side with its baseline and ceilings, on this machine.

Run it through benches/harness/run.sh (which installs pyspark, psutil, matplotlib and the Spark Kafka
jars first). Stages, one after the other, never overlapping, all on the same Kafka topic:

  kafka            Kafka's own ConsumerPerformance: how fast can anything read the topic (ceiling)
  carflow          `carflow run` with the shipped queries/: raw lake on HDFS + InfluxDB windows
  spark-stateful   Spark Structured Streaming, one query per output, windows in Spark's state store
  spark-recompute  Spark Structured Streaming, one query, foreachBatch recomputes touched windows
  demo             `carflow demo`: generator → SQL → Parquet on local disk, no Kafka (engine core)
  core-ceiling     decode (and arrow-json decode alone) + Parquet encode of the same rows, one process
                   (cargo bench --bench core_ceiling)
  latency          `carflow api` + `carflow run` on a fresh topic: transactions POSTed at fixed rates
                   (default 1k, 10k tx/s and as fast as possible), p50/p99 from the POST's 200 to the
                   row in the lake and to its minute's point in InfluxDB
  files            the lake of the carflow (else latency) stage: files per dataset, per Kafka
                   partition and dt, mean size, and the time of a `carflow sql` GROUP BY over `cars`

Every figure comes from the process tree of the system under test: wall time, CPU time (user +
system of every process in the tree), peak RSS (sum over the tree, sampled every 100 ms; at least
the kernel's max RSS of the largest process). Results go to benches/results/<date>/.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPConnection, HTTPException
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
HARNESS = REPO / "benches" / "harness"
SPARK_JOB = REPO / "benches" / "spark" / "carflow_spark.py"
CONFIG = REPO / "deploy" / "carflow.toml"
SERVICES = REPO / "deploy" / "services.sh"
BROKERS = "127.0.0.1:9092"
HDFS = "hdfs://127.0.0.1:9000"
WEBHDFS = "http://127.0.0.1:9870/webhdfs/v1"
INFLUX = "http://127.0.0.1:8086"
STAGES = ["kafka", "carflow", "spark-stateful", "spark-recompute", "demo", "core-ceiling", "latency", "files",
          "soak"]
MEASUREMENTS = ["sales_by_brand", "sales_by_state", "sales_by_payment", "sales_by_model", "price_percentiles"]


class BenchError(Exception):
    """A stage failed; the message says what and where to look."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Measured processes


class Measured:
    """A child process tree, in its own process group, with CPU and memory sampled."""

    live: list["Measured"] = []

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path = REPO, interval: float = 0.1):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self.logf = open(log_path, "wb")
        self.t_start = time.time()
        self.p = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  env=env, cwd=cwd, start_new_session=True)
        self.pgid = self.p.pid
        Measured.live.append(self)
        self.root = psutil.Process(self.p.pid)
        self.cpu: dict[tuple[int, float], float] = {}  # (pid, create_time) -> user+system seconds
        self.peak_rss = 0
        # Anonymous memory (RSS less file-backed pages such as the binary's own code).
        self.peak_anon = 0
        self.timeline: list[tuple[float, float, int]] = []  # (time, CPU seconds so far, RSS)
        self.rusage = None
        self.rc: int | None = None
        self.t_exit: float | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._interval = interval
        self._sampler = threading.Thread(target=self._sample_loop, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:
            return
        rss = 0
        anon = 0
        for pr in procs:
            try:
                with pr.oneshot():
                    t = pr.cpu_times()
                    mi = pr.memory_info()
                    m = mi.rss
                    key = (pr.pid, pr.create_time())
            except psutil.Error:
                continue
            rss += m
            anon += m - getattr(mi, "shared", 0)
            with self._lock:
                self.cpu[key] = t.user + t.system
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)
        with self._lock:
            self.timeline.append((time.time(), sum(self.cpu.values()), rss))

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def cpu_seconds(self) -> float:
        """CPU time of the tree so far (sampled), or at exit the larger of sampled and rusage."""
        with self._lock:
            sampled = sum(self.cpu.values())
        if self.rusage is not None:
            return max(sampled, self.rusage.ru_utime + self.rusage.ru_stime)
        return sampled

    def cpu_at(self, t: float) -> float:
        """CPU seconds of the tree at time t (the last sample at or before it)."""
        with self._lock:
            before = [c for (ts, c, _) in self.timeline if ts <= t]
        return before[-1] if before else 0.0

    def peak_rss_bytes(self) -> int:
        kernel = self.rusage.ru_maxrss * 1024 if self.rusage is not None else 0
        return max(self.peak_rss, kernel)

    def poll(self) -> int | None:
        if self.rc is not None:
            return self.rc
        self._sample()
        pid, status, ru = os.wait4(self.p.pid, os.WNOHANG)
        if pid == 0:
            return None
        self.t_exit = time.time()
        self.rusage = ru
        self.rc = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.rc  # reaped here, not by Popen
        self._stop.set()
        self.logf.close()
        # stragglers left in the group (none expected)
        self._killpg(signal.SIGKILL)
        if self in Measured.live:
            Measured.live.remove(self)
        return self.rc

    def wait(self, timeout: float) -> int | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.poll() is not None:
                return self.rc
            time.sleep(0.05)
        return None

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace: float = 30.0, sig: int = signal.SIGTERM) -> int | None:
        """Signal the group, wait `grace` seconds, then SIGKILL."""
        if self.poll() is not None:
            return self.rc
        self._killpg(sig)
        if self.wait(grace) is None:
            log(f"{self.name}: still running {grace:.0f}s after signal {sig}; killing the process group")
            self._killpg(signal.SIGKILL)
            self.wait(10)
        return self.rc

    def tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    @classmethod
    def stop_all(cls) -> None:
        for m in list(cls.live):
            log(f"cleanup: stopping {m.name} (pid {m.p.pid})")
            m.stop(grace=10)


def _on_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# ---------------------------------------------------------------------------------------------
# Services: Kafka tools, InfluxDB, WebHDFS


def kafka_classpath() -> str:
    out = subprocess.run([str(SERVICES), "classpath", "kafka"], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise BenchError(f"deploy/services.sh classpath kafka failed: {out.stderr.strip()}")
    return out.stdout.strip()


def kafka_tool(cp: str, cls: str, *args: str, timeout: float = 120) -> str:
    cmd = ["java", "-Xmx512m", "-cp", cp, cls, "--bootstrap-server", BROKERS, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"{cls.rsplit('.', 1)[-1]} {' '.join(args)} failed:\n{out.stderr.strip()[-2000:]}")
    return out.stdout


def topic_offsets(cp: str, topic: str) -> dict[int, tuple[int, int]] | None:
    """{partition: (earliest, latest)}, or None when the topic does not exist."""
    topics = kafka_tool(cp, "org.apache.kafka.tools.TopicCommand", "--list").split()
    if topic not in topics:
        return None
    res: dict[int, list[int]] = {}
    for when, idx in (("-2", 0), ("-1", 1)):
        out = kafka_tool(cp, "org.apache.kafka.tools.GetOffsetShell", "--topic", topic, "--time", when)
        for line in out.split():
            t, p, o = line.rsplit(":", 2)
            res.setdefault(int(p), [0, 0])[idx] = int(o)
    return {p: (v[0], v[1]) for p, v in res.items()}


def http(method: str, url: str, data: bytes | None = None, timeout: float = 30) -> bytes:
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


def influx_query(db: str | None, q: str) -> list[dict]:
    params = {"q": q}
    if db:
        params["db"] = db
    body = http("POST", f"{INFLUX}/query", urllib.parse.urlencode(params).encode())
    res = json.loads(body)["results"]
    for r in res:
        if "error" in r:
            raise BenchError(f"InfluxDB: {q}: {r['error']}")
    return res


def influx_summary(db: str) -> dict[str, dict]:
    """Per measurement: points and the total of the `sales` field."""
    out = {}
    for m in MEASUREMENTS:
        field = "max_price" if m == "price_percentiles" else "revenue"
        series = influx_query(db, f'SELECT count("sales"), sum("sales"), sum("{field}") FROM "{m}"')[0].get("series")
        if series:
            _, points, sales, total = series[0]["values"][0]
            out[m] = {"points": points, "sales": sales, f"sum_{field}": round(total or 0, 2)}
        else:
            out[m] = {"points": 0, "sales": 0}
    return out


def webhdfs(op: str, path: str, method: str = "GET", **params) -> dict:
    q = urllib.parse.urlencode({"op": op, "user.name": os.environ.get("USER", "root"), **params})
    try:
        body = http(method, f"{WEBHDFS}{path}?{q}")
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}
        raise
    return json.loads(body) if body else {}


def hdfs_summary(path: str) -> dict:
    s = webhdfs("GETCONTENTSUMMARY", path).get("ContentSummary")
    if not s:
        return {"bytes": 0, "files": 0}
    return {"bytes": s["length"], "files": s["fileCount"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric_values(text: str) -> dict[str, float]:
    vals = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        k, _, v = line.rpartition(" ")
        try:
            vals[k] = float(v)
        except ValueError:
            pass
    return vals


def parse_duration_s(s: str) -> float:
    """`1s`, `500ms`, `2m`, `1h` → seconds."""
    m = re.fullmatch(r"\s*([\d.]+)\s*(ms|s|m|h)\s*", str(s))
    if not m:
        raise BenchError(f"cannot read the duration {s!r}")
    return float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]


def pct(values: list[float], q: float) -> float | None:
    """The q-quantile (0 < q <= 1) by nearest rank: a value that was measured, never interpolated."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, min(len(v) - 1, math.ceil(q * len(v)) - 1))]


def webhdfs_list(path: str) -> list[dict]:
    """LISTSTATUS of a directory ([] when it does not exist)."""
    return webhdfs("LISTSTATUS", path).get("FileStatuses", {}).get("FileStatus", [])


def hdfs_path(url: str) -> str:
    """hdfs://127.0.0.1:9000/a/b → /a/b (only this machine's namenode, which WebHDFS serves)."""
    if not url.startswith(HDFS + "/"):
        raise BenchError(f"{url}: only lakes under {HDFS}/ can be listed (through WebHDFS)")
    return url[len(HDFS):]


# part-<topic>[-<topic id>]-<partition>-<first offset>-<last offset>.parquet (engine/src/sink/lake.rs)
PART_FILE = re.compile(r"-(\d+)-(\d{20})-(\d{20})\.parquet$")


def lake_walk(path: str, limit: int) -> list[tuple[str, int, int]]:
    """Every file under `path` as (path relative to it, bytes, HDFS modification time in ms),
    skipping `_…` and `.…` directories (carflow's ledger and staging); at most `limit` files."""
    out: list[tuple[str, int, int]] = []
    todo = [""]
    while todo:
        rel = todo.pop()
        for st in webhdfs_list(f"{path}/{rel}".rstrip("/")):
            name = st["pathSuffix"]
            child = f"{rel}/{name}" if rel else name
            if st["type"] == "DIRECTORY":
                if not name.startswith(("_", ".")):
                    todo.append(child)
            else:
                out.append((child, st["length"], st["modificationTime"]))
                if len(out) >= limit:
                    raise BenchError(f"{path}: more than {limit} files (--files-max)")
    return out


def wait_healthy(m: "Measured", url: str, within_s: float, poll_s: float = 0.1) -> None:
    """Wait until `url`/health answers 200; fail with the process's log tail if it exits first or
    does not answer within `within_s`."""
    deadline = time.time() + within_s
    while True:
        if m.poll() is not None:
            raise BenchError(f"{m.name} exited {m.rc} at start:\n{m.tail()}")
        try:
            http("GET", f"{url}/health", timeout=2)
            return
        except (urllib.error.URLError, OSError):
            if time.time() > deadline:
                raise BenchError(f"{m.name}: /health not 200 after {within_s:.0f}s:\n{m.tail()}")
            time.sleep(poll_s)


def lake_file_stats(files: list[tuple[str, int, int]]) -> dict[str, dict]:
    """Per dataset of `lake_walk`'s files: count, bytes, per dt, per Kafka partition, per
    (dt, partition), mean size."""
    datasets: dict[str, dict] = {}
    for rel, size, _mtime in files:
        ds, _, rest = rel.partition("/")
        if not rest or not rel.endswith(".parquet"):
            continue
        d = datasets.setdefault(ds, {"files": 0, "bytes": 0, "by_dt": {}, "by_partition": {}, "by_dt_partition": {}})
        d["files"] += 1
        d["bytes"] += size
        dtp = next((seg for seg in rest.split("/") if seg.startswith("dt=")), "(no dt)")
        m = PART_FILE.search(rest)
        part = m.group(1) if m else "?"
        d["by_dt"][dtp] = d["by_dt"].get(dtp, 0) + 1
        d["by_partition"][part] = d["by_partition"].get(part, 0) + 1
        key = f"{dtp}/{part}"
        d["by_dt_partition"][key] = d["by_dt_partition"].get(key, 0) + 1
    for d in datasets.values():
        d["mean_file_mb"] = d["bytes"] / d["files"] / 1e6 if d["files"] else None
        per = list(d["by_dt_partition"].values())
        d["files_per_dt_partition"] = {"min": min(per), "mean": sum(per) / len(per), "max": max(per),
                                       "groups": len(per)} if per else None
    return datasets


def carflow_sql(binary: str, lake: str, sql: str, timeout: float) -> list[dict]:
    """Rows of `carflow sql --format csv` (one statement), as dicts of strings."""
    cmd = [binary, "sql", "--config", str(CONFIG), "--lake", lake, "--quiet", "--format", "csv", "-c", sql]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise BenchError(f"carflow sql exited {out.returncode}: {sql[:200]}…\n{out.stderr[-2000:]}")
    return list(csv.DictReader(out.stdout.splitlines()))


class LatencyLoad:
    """The latency stage's client: POSTs transactions to `carflow api` at a fixed rate from a few
    threads (one keep-alive connection each), samples some of them, and watches the lake (WebHDFS
    listing of `cars/`) and InfluxDB (`sales_by_brand`) to see when each sample got there.

    A sample is the first record of a POST answered 200, taken at most every step/samples seconds.
    Its clock starts when that answer has been read (`t_ack`). Lake: the first listing that shows
    the Parquet file holding its (Kafka partition, offset) — found after the run with one `carflow
    sql` query on the lake, which also proves the row readable. InfluxDB: the first poll at which
    the `sales` of its (brand, minute) point is at least the number of records of that key
    acknowledged up to its own answer, and not before its file is in the lake (the engine writes a
    batch's window points after its lake commit).
    """

    def __init__(self, api_port: int, lake_path: str, influx_db: str, templates: list[tuple[list[str], str]],
                 id_prefix: str, poll_s: float):
        self.port, self.lake_path, self.db = api_port, lake_path, influx_db
        self.templates, self.prefix, self.poll_s = templates, id_prefix, poll_s
        self.lock = threading.Lock()
        self.samples: list[dict] = []
        self.key_acked: dict[tuple[str, int], int] = {}  # (brand, minute ms) -> records acknowledged
        self.points: dict[tuple[str, int], int] = {}  # (brand, minute ms) -> `sales` of the point
        self.files_seen: dict[tuple[int, int, int], float] = {}  # (partition, first, last) -> first seen
        self.acked = 0
        self.template_i = 0
        self.polls = 0
        self.poll_errors: list[str] = []
        self.since_ms = int(time.time() // 60 * 60_000)
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)

    # -- watching --------------------------------------------------------------------------------

    def start_watching(self) -> None:
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        self._watcher.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.is_set():
            t0 = time.time()
            try:
                seen = []
                for d in webhdfs_list(f"{self.lake_path}/cars"):
                    if d["type"] == "DIRECTORY":
                        seen += [st["pathSuffix"] for st in webhdfs_list(f"{self.lake_path}/cars/{d['pathSuffix']}")]
                t = time.time()
                with self.lock:
                    for name in seen:
                        m = PART_FILE.search(name)
                        if m:
                            self.files_seen.setdefault((int(m.group(1)), int(m.group(2)), int(m.group(3))), t)
                params = {"db": self.db, "epoch": "ms",
                          "q": f'SELECT "sales", "brand" FROM "sales_by_brand" WHERE time >= {self.since_ms}ms'}
                body = json.loads(http("POST", f"{INFLUX}/query", urllib.parse.urlencode(params).encode(), timeout=10))
                t = time.time()
                series = (body.get("results") or [{}])[0].get("series") or []
                with self.lock:
                    for sr in series:
                        cols = sr["columns"]
                        for row in sr["values"]:
                            r = dict(zip(cols, row))
                            if r.get("sales") is not None and r.get("brand") is not None:
                                self.points[(r["brand"], int(r["time"]))] = int(r["sales"])
                    for s in self.samples:
                        if s["t_count"] is None and self.points.get(s["key"], 0) >= s["k"]:
                            s["t_count"] = t
                self.polls += 1
            except Exception as e:  # noqa: BLE001 - a failed poll is counted, the next one retries
                if len(self.poll_errors) < 20:
                    self.poll_errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(max(0.0, self.poll_s - (time.time() - t0)))

    # -- load -------------------------------------------------------------------------------------

    def _body(self, n: int, post: int, label: str) -> tuple[bytes, list[tuple[str, int]], str]:
        now = time.time()
        ms = int(now * 1000)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{ms % 1000:03d}Z"
        minute = ms // 60_000 * 60_000
        with self.lock:
            start = self.template_i
            self.template_i += n
        lines, keys = [], []
        first_id = ""
        for j in range(n):
            (a, b, c), brand = self.templates[(start + j) % len(self.templates)]
            tid = f"{self.prefix}-{label}-{post:07d}-{j:05d}"
            first_id = first_id or tid
            lines.append(a + tid + b + ts + c)
            keys.append((brand, minute))
        return ("\n".join(lines) + "\n").encode(), keys, first_id

    def run_step(self, label: str, rate: float | None, duration: float, batch: int, workers: int,
                 max_samples: int, sample: bool = True, max_posts: int | None = None) -> dict:
        """POST `batch` records at a time, `rate` records/s in total (None: as fast as the API
        answers), for `duration` seconds (or `max_posts` POSTs), from `workers` threads."""
        interval = batch / rate if rate else 0.0
        cpu0 = os.times()
        t0 = time.time()
        t_end = t0 + duration
        gap = duration / max_samples if max_samples else float("inf")
        st = {"next_post": 0, "next_sample": t0, "acked": 0, "posts": 0, "statuses": {}, "errors": [],
              "max_behind_s": 0.0, "t_last_ack": t0}

        def worker() -> None:
            conn = HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                while True:
                    with self.lock:
                        i = st["next_post"]
                        st["next_post"] += 1
                    due = t0 + i * interval
                    now = time.time()
                    if due >= t_end or now >= t_end or (max_posts is not None and i >= max_posts):
                        return
                    if due > now:
                        time.sleep(due - now)
                    with self.lock:
                        st["max_behind_s"] = max(st["max_behind_s"], time.time() - due)
                    body, keys, first_id = self._body(batch, i, label)
                    try:
                        conn.request("POST", "/api/logs", body, {"Content-Type": "application/x-ndjson"})
                        resp = conn.getresponse()
                        answer = resp.read()
                        t_ack = time.time()
                        status = resp.status
                    except (OSError, HTTPException) as e:
                        conn.close()
                        conn = HTTPConnection("127.0.0.1", self.port, timeout=30)
                        with self.lock:
                            st["statuses"]["error"] = st["statuses"].get("error", 0) + 1
                            if len(st["errors"]) < 5:
                                st["errors"].append(f"{type(e).__name__}: {e}")
                        continue
                    bad: set[int] = set()
                    if status != 200:
                        try:
                            a = json.loads(answer)
                            bad = {e["line"] for e in a.get("rejected", []) + a.get("not_accepted", [])}
                            if not a.get("accepted"):
                                bad = set(range(1, len(keys) + 1))
                        except (ValueError, KeyError, TypeError):
                            bad = set(range(1, len(keys) + 1))
                    with self.lock:
                        st["posts"] += 1
                        st["statuses"][str(status)] = st["statuses"].get(str(status), 0) + 1
                        for j, k in enumerate(keys, start=1):
                            if j not in bad:
                                self.key_acked[k] = self.key_acked.get(k, 0) + 1
                        n_ok = len(keys) - len(bad)
                        st["acked"] += n_ok
                        self.acked += n_ok
                        st["t_last_ack"] = max(st["t_last_ack"], t_ack)
                        if sample and status == 200 and t_ack >= st["next_sample"] and t_ack < t_end + 5:
                            st["next_sample"] = max(st["next_sample"] + gap, t_ack)
                            self.samples.append({"id": first_id, "step": label, "t_ack": t_ack, "key": keys[0],
                                                 "k": self.key_acked[keys[0]], "t_count": None})
            finally:
                conn.close()

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=duration + 60)
        if any(t.is_alive() for t in threads):
            raise BenchError(f"latency step {label}: client threads still busy 60 s after the step's end")
        sending_s = max(st["t_last_ack"] - t0, 1e-9)
        cpu1 = os.times()
        return {"step": label, "rate_offered": rate, "records_per_post": batch, "workers": workers,
                "duration_s": duration, "posts": st["posts"], "acked": st["acked"],
                "rate_achieved": st["acked"] / sending_s, "statuses": st["statuses"],
                "client_errors": st["errors"], "client_max_behind_s": round(st["max_behind_s"], 3),
                "client_cpu_s": round(cpu1.user + cpu1.system - cpu0.user - cpu0.system, 2)}



# ---------------------------------------------------------------------------------------------
# Stages


class Bench:
    def __init__(self, args):
        self.a = args
        self.n = args.records
        self.run_id = time.strftime("%Y%m%d%H%M%S")
        self.topic = args.topic or f"bench-{self.n}"
        self.work = Path(args.work_dir or f"/tmp/carflow-bench-{self.run_id}")
        self.work.mkdir(parents=True, exist_ok=True)
        self.hdfs_root = f"/bench/{self.run_id}"
        self.influx_dbs: list[str] = []
        self.results: dict[str, dict] = {}
        self.checks: list[dict] = []
        self.kafka_cp = kafka_classpath()
        cfg = tomllib.loads(CONFIG.read_text())
        self.batch_max_rows = int(os.environ.get("CARFLOW_BATCH_MAX_ROWS", cfg["batch"]["max_rows"]))
        self.lateness = cfg.get("windows", {}).get("allowed_lateness", "4m")
        self.linger = os.environ.get("CARFLOW_BATCH_LINGER", cfg["batch"].get("linger", "1s"))
        self.topic_used = True  # False when only latency/files run: the bench topic is not checked or filled
        self.created_topics: list[str] = []  # topics of this run (the latency stage's), deleted at the end
        self.topic_bytes: int | None = None  # bytes of the N messages, as carflow counts them
        self.perf_bytes: int | None = None  # the same, as ConsumerPerformance counts them (MiB * 2^20)

    # -- preparation ---------------------------------------------------------------------------

    def preflight(self) -> None:
        st = subprocess.run([str(SERVICES), "status"], capture_output=True, text=True, timeout=120)
        if st.returncode != 0:
            raise BenchError(f"services are not all up (run deploy/services.sh up):\n{st.stdout}{st.stderr}")
        if not Path(self.a.carflow).is_file():
            raise BenchError(
                f"no carflow binary at {self.a.carflow}; build one: "
                "cargo build --release -p carflow (or pass --carflow PATH)")

    def ensure_topic(self) -> None:
        offs = topic_offsets(self.kafka_cp, self.topic)
        if offs is None:
            log(f"creating topic {self.topic} ({self.a.partitions} partitions)")
            kafka_tool(self.kafka_cp, "org.apache.kafka.tools.TopicCommand", "--create", "--if-not-exists",
                       "--topic", self.topic, "--partitions", str(self.a.partitions), "--replication-factor", "1")
            offs = topic_offsets(self.kafka_cp, self.topic) or {}
        count = sum(l - e for e, l in offs.values())
        if count == 0:
            log(f"filling {self.topic} with {self.n} generated transactions (seed {self.a.seed})")
            t0 = time.time()
            out = subprocess.run(
                [self.a.carflow, "generate", "--config", str(CONFIG), "--count", str(self.n),
                 "--topic", self.topic, "--seed", str(self.a.seed)],
                cwd=REPO, capture_output=True, text=True, timeout=max(600, self.n / 1000),
                stdin=subprocess.DEVNULL)
            if out.returncode != 0:
                raise BenchError(f"carflow generate failed:\n{out.stderr[-2000:]}")
            log(f"  {out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ''} ({time.time() - t0:.0f}s)")
            offs = topic_offsets(self.kafka_cp, self.topic) or {}
            count = sum(l - e for e, l in offs.values())
        if count != self.n:
            raise BenchError(
                f"topic {self.topic} holds {count} records, not {self.n}: delete it "
                f"(TopicCommand --delete --topic {self.topic}) or pass --topic NAME")
        if len(offs) != self.a.partitions:
            log(f"note: topic {self.topic} has {len(offs)} partitions (asked for {self.a.partitions})")
        self.partitions = len(offs)
        log(f"topic {self.topic}: {count} records in {len(offs)} partitions")

    def influx_db(self, name: str) -> str:
        db = f"bench_{self.run_id}_{name}".replace("-", "_")
        influx_query(None, f'CREATE DATABASE "{db}"')
        self.influx_dbs.append(db)
        return db

    def cleanup_outputs(self) -> None:
        if self.a.keep:
            log(f"kept: HDFS {HDFS}{self.hdfs_root}, InfluxDB databases {', '.join(self.influx_dbs)}, {self.work}"
                + (f", topics {', '.join(self.created_topics)}" if self.created_topics else ""))
            return
        for db in self.influx_dbs:
            try:
                influx_query(None, f'DROP DATABASE "{db}"')
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: drop {db}: {e}")
        groups = [f"bench-{self.run_id}-carflow", f"bench-{self.run_id}-perf",
                  f"bench-{self.run_id}-soak-merging", f"bench-{self.run_id}-soak-no-merging"]
        try:
            args = [a for g in groups for a in ("--group", g)]
            kafka_tool(self.kafka_cp, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--delete", *args)
        except Exception as e:  # noqa: BLE001 - a group that never existed is fine
            if "does not exist" not in str(e) and "GroupIdNotFound" not in str(e):
                log(f"cleanup: delete consumer groups: {str(e)[-300:]}")
        for topic in self.created_topics:
            try:
                kafka_tool(self.kafka_cp, "org.apache.kafka.tools.TopicCommand", "--delete", "--topic", topic)
            except Exception as e:  # noqa: BLE001
                log(f"cleanup: delete topic {topic}: {str(e)[-300:]}")
        if self.created_topics:
            try:
                kafka_tool(self.kafka_cp, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand", "--delete",
                           "--group", f"bench-{self.run_id}-latency")
            except Exception as e:  # noqa: BLE001 - a group that never existed is fine
                if "does not exist" not in str(e) and "GroupIdNotFound" not in str(e):
                    log(f"cleanup: delete consumer group bench-{self.run_id}-latency: {str(e)[-300:]}")
        try:
            webhdfs("DELETE", self.hdfs_root, method="DELETE", recursive="true")
        except Exception as e:  # noqa: BLE001
            log(f"cleanup: delete {self.hdfs_root}: {e}")
        shutil.rmtree(self.work, ignore_errors=True)

    # -- stage: Kafka ceiling -----------------------------------------------------------------

    def stage_kafka(self) -> dict:
        group = f"bench-{self.run_id}-perf"
        cmd = ["java", "-Xmx512M", "-cp", self.kafka_cp, "org.apache.kafka.tools.ConsumerPerformance",
               "--bootstrap-server", BROKERS, "--topic", self.topic, "--num-records", str(self.n),
               "--group", group, "--timeout", "60000"]
        m = Measured("kafka ConsumerPerformance", cmd, self.work / "kafka-perf.log")
        rc = m.wait(self.a.timeout)
        if rc is None:
            m.stop(5, signal.SIGKILL)
            raise BenchError(f"ConsumerPerformance timed out after {self.a.timeout}s:\n{m.tail()}")
        if rc != 0:
            raise BenchError(f"ConsumerPerformance exited {rc}:\n{m.tail()}")
        lines = [l for l in m.log_path.read_text().splitlines() if "," in l]
        hdr_i = next((i for i, l in enumerate(lines) if "start.time" in l), None)
        if hdr_i is None or hdr_i + 1 >= len(lines):
            raise BenchError(f"cannot read ConsumerPerformance output:\n{m.tail()}")
        keys = [k.strip() for k in lines[hdr_i].split(",")]
        vals = [v.strip() for v in lines[hdr_i + 1].split(",")]
        perf = dict(zip(keys, vals))
        n = int(float(perf["data.consumed.in.nMsg"]))
        mb = float(perf["data.consumed.in.MB"])  # MiB, as Kafka counts them
        fetch_ms = float(perf["fetch.time.ms"])
        self.perf_bytes = int(mb * 1024 * 1024)
        return self._result(
            "Kafka ConsumerPerformance", "ceiling: read the topic, nothing else", m,
            records=n, t_ready=None, t_done=m.t_exit, proc_s=fetch_ms / 1000.0,
            extra={"perf": perf, "note": "proc_s = fetch.time.ms (excludes JVM start, group join)"})

    # -- stage: carflow -----------------------------------------------------------------------

    def spark_comparable_queries(self) -> tuple[Path, list[str]]:
        """queries/ less the files the Spark jobs do not implement (they compute the raw lake and
        the MEASUREMENTS), so both sides do the same work. Returns the directory and what was left out."""
        d = self.work / "queries-spark-comparable"
        d.mkdir(parents=True, exist_ok=True)
        wanted = {"cars", *MEASUREMENTS}
        left_out = []
        for f in sorted((REPO / "queries").glob("*.sql")):
            m = re.search(r"INSERT\s+INTO\s+(?:lake|influx)\.(\w+)", f.read_text(), re.I)
            if m and m.group(1) in wanted:
                shutil.copy(f, d / f.name)
            else:
                left_out.append(f.name)
        return d, left_out

    def stage_carflow(self) -> dict:
        port = free_port()
        queries, left_out = self.spark_comparable_queries()
        if left_out:
            log(f"  carflow runs the queries the Spark jobs implement; left out: {', '.join(left_out)}")
        db = self.influx_db("carflow")
        lake = f"{HDFS}{self.hdfs_root}/carflow"
        env = dict(os.environ)
        env.update({
            "CARFLOW_KAFKA_TOPIC": self.topic,
            "CARFLOW_KAFKA_GROUP_ID": f"bench-{self.run_id}-carflow",
            "CARFLOW_LAKE_ROOT": lake,
            "CARFLOW_INFLUX_BUCKET": db,
            "CARFLOW_HTTP_LISTEN": f"127.0.0.1:{port}",
            "CARFLOW_QUERIES_DIR": str(queries),
        })
        cmd = [self.a.carflow, "run", "--config", str(CONFIG), "--engine-id", "bench"]
        m = Measured("carflow run", cmd, self.work / "carflow.log", env=env)
        base = f"http://127.0.0.1:{port}"
        t_ready = t_done = None
        vals: dict[str, float] = {}
        deadline = time.time() + self.a.timeout
        cpu_done = None
        try:
            while True:
                if m.poll() is not None:
                    raise BenchError(f"carflow exited {m.rc} before all records were in:\n{m.tail()}")
                if time.time() > deadline:
                    raise BenchError(f"carflow: {vals.get('carflow_records_in_total', 0):.0f} of {self.n} "
                                     f"records after {self.a.timeout}s:\n{m.tail()}")
                try:
                    if t_ready is None:
                        http("GET", f"{base}/health", timeout=2)
                        t_ready = time.time()
                    vals = metric_values(http("GET", f"{base}/metrics", timeout=5).decode())
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)
                    continue
                if vals.get("carflow_records_in_total", 0) >= self.n:
                    t_done = time.time()
                    cpu_done = m.cpu_seconds()
                    break
                time.sleep(0.1)
        finally:
            if m.poll() is None:
                rc = m.stop(grace=60)
                if t_done is not None and rc not in (0, None):
                    log(f"carflow exited {rc} after SIGTERM (log: {m.log_path})")
        bytes_in = vals.get("carflow_bytes_in_total")
        rows_lake = vals.get('carflow_rows_out_total{sink="lake",target="cars"}', 0)
        self.check("carflow lake rows == records", rows_lake, self.n)
        self.check("carflow dead letters == 0", vals.get("carflow_dead_letters_total", 0), 0)
        r = self._result(
            "carflow", "Kafka → queries/ → HDFS lake + InfluxDB", m,
            records=int(vals.get("carflow_records_in_total", 0)), t_ready=t_ready, t_done=t_done,
            extra={"metrics_at_done": vals, "cpu_s_at_done": cpu_done, "lake": lake, "influx_db": db,
                   "queries_left_out": left_out,
                   "bytes_in": bytes_in, "batches": vals.get("carflow_batches_total"),
                   "late_rows": vals.get("carflow_late_rows_total"),
                   "shutdown_s": (m.t_exit - t_done) if m.t_exit and t_done else None})
        r["lake_hdfs"] = hdfs_summary(f"{self.hdfs_root}/carflow/cars")
        r["influx"] = influx_summary(db)
        if bytes_in:
            self.topic_bytes = int(bytes_in)
        return r

    # -- stage: Spark ---------------------------------------------------------------------------

    def stage_spark(self, windows: str) -> dict:
        jars_dir = Path(os.environ.get("CARFLOW_BENCH_SPARK_JARS", ""))
        jars = sorted(str(p) for p in jars_dir.glob("*.jar")) if jars_dir.is_dir() else []
        if len(jars) != 4:
            raise BenchError(f"expected the 4 Kafka connector jars in {jars_dir} (run through run.sh)")
        db = self.influx_db(f"spark_{windows}")
        lake = f"{HDFS}{self.hdfs_root}/spark-{windows}"
        progress = self.work / f"spark-{windows}-progress.jsonl"
        cmd = [sys.executable, str(SPARK_JOB), "--brokers", BROKERS, "--topic", self.topic,
               "--lake", lake, "--checkpoint", f"{HDFS}{self.hdfs_root}/spark-{windows}-checkpoints",
               "--influx-url", INFLUX, "--influx-db", db, "--jars", ",".join(jars),
               "--master", f"local[{self.a.spark_cores}]", "--windows", windows,
               "--max-offsets-per-trigger", str(self.a.spark_max_offsets),
               "--shuffle-partitions", str(self.a.spark_shuffle_partitions),
               "--lateness", spark_interval(self.lateness), "--progress-file", str(progress)]
        for c in self.a.spark_conf:
            cmd += ["--conf", c]
        env = dict(os.environ)
        env.update({"TZ": "UTC", "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
                    "PYSPARK_DRIVER_PYTHON": sys.executable})
        if self.a.spark_java_home:
            env["JAVA_HOME"] = self.a.spark_java_home
        m = Measured(f"spark {windows}", cmd, self.work / f"spark-{windows}.log", env=env)
        rc = m.wait(self.a.timeout)
        if rc is None:
            m.stop(grace=30)
            raise BenchError(f"spark {windows}: not done after {self.a.timeout}s (log: {m.log_path}):\n{m.tail()}")
        events = {}
        for line in m.log_path.read_text(errors="replace").splitlines():
            if line.startswith('{"event"'):
                e = json.loads(line)
                events[e["event"]] = e
        if rc != 0 or "finished" not in events or events["finished"].get("failed"):
            raise BenchError(f"spark {windows} exited {rc} (log: {m.log_path}):\n{m.tail(40)}")
        prog = [json.loads(l) for l in progress.read_text().splitlines() if l.strip()] if progress.exists() else []
        starts = [iso_epoch(p["timestamp"]) for p in prog]
        t_ready = min(starts) if starts else None
        t_done = events["finished"]["t"]
        input_query = "cars" if windows == "stateful" else "recompute"
        rows = sum(p["numInputRows"] for p in prog if p["query"] == input_query)
        per_query: dict[str, dict] = {}
        for p in prog:
            q = per_query.setdefault(p["query"], {"batches": 0, "rows": 0, "late_rows_dropped": 0})
            q["batches"] += 1
            q["rows"] += p["numInputRows"]
            for so in p.get("stateOperators") or []:
                q["late_rows_dropped"] += so.get("numRowsDroppedByWatermark", 0) or 0
        self.check(f"spark {windows}: rows read == records", rows, self.n)
        r = self._result(
            f"Spark {windows}", SPARK_DESCR[windows], m, records=rows, t_ready=t_ready, t_done=t_done,
            extra={"spark": events.get("started", {}).get("spark"), "conf": events.get("started", {}).get("conf"),
                   "queries": per_query, "lake": lake, "influx_db": db,
                   "shutdown_s": (m.t_exit - t_done) if m.t_exit else None,
                   "note": "t_ready = trigger time of the first micro-batch; t_done = every query stopped"})
        r["lake_hdfs"] = hdfs_summary(f"{self.hdfs_root}/spark-{windows}/cars")
        r["influx"] = influx_summary(db)
        cf = self.results.get("carflow")
        if cf and cf.get("influx"):
            # The same outputs: every exact aggregate (points, sales, revenue / max price) equal.
            what = f"spark {windows}: InfluxDB points and totals == carflow's"
            dropped = sum(q["late_rows_dropped"] for q in per_query.values())
            fewer = all(r["influx"].get(k, {}).get("sales", 0) <= v["sales"] for k, v in cf["influx"].items())
            if r["influx"] != cf["influx"] and dropped > 0 and fewer:
                # Not a harness failure but a result: Spark's watermark is global (the max event
                # time over all Kafka partitions), so rows of a partition that is read behind the
                # others fall behind it and are dropped; carflow's watermark is the minimum over
                # partitions. The lake check (rows read == records) still holds for Spark.
                missing = cf["influx"]["sales_by_brand"]["sales"] - r["influx"].get("sales_by_brand", {}).get("sales", 0)
                self.checks.append({"check": what, "got": r["influx"], "want": cf["influx"], "ok": True,
                                    "difference": f"Spark dropped rows as late (numRowsDroppedByWatermark "
                                                  f"{dropped:,} over its 5 aggregations; sales_by_brand is "
                                                  f"missing {missing:,} sales): its watermark is global across "
                                                  f"Kafka partitions"})
                log(f"DIFFERENCE: {what}: Spark dropped {dropped:,} rows as late (global watermark)")
            else:
                self.check(what, r["influx"], cf["influx"])
        return r

    # -- stage: engine core (demo) ------------------------------------------------------------

    def stage_demo(self) -> dict:
        d = self.work / "demo"
        d.mkdir(exist_ok=True)
        cmd = [self.a.carflow, "demo", "--config", str(CONFIG), "--count", str(self.n), "--rate", "0",
               "--seed", str(self.a.seed), "--lake", str(d / "lake"), "--metrics-file", str(d / "metrics.lp"),
               "--queries", str(REPO / "queries")]
        m = Measured("carflow demo", cmd, self.work / "demo.log")
        rc = m.wait(self.a.timeout)
        if rc is None:
            m.stop(grace=30)
            raise BenchError(f"carflow demo: not done after {self.a.timeout}s:\n{m.tail()}")
        if rc != 0:
            raise BenchError(f"carflow demo exited {rc}:\n{m.tail()}")
        text = m.log_path.read_text(errors="replace")
        g = re.search(r"generated (\d+) transactions in ([\d.]+)s", text)
        rows = re.search(r"lake\.cars\s+(\d+) rows", text)
        self.check("demo lake rows == records", int(rows.group(1)) if rows else None, self.n)
        lake_bytes = sum(f.stat().st_size for f in (d / "lake").rglob("*.parquet"))
        r = self._result("carflow demo (engine core)", "generator → queries/ → local Parquet + .lp, no Kafka",
                         m, records=int(g.group(1)) if g else self.n, t_ready=None, t_done=m.t_exit,
                         extra={"pipeline_s": float(g.group(2)) if g else None, "lake_bytes_local": lake_bytes,
                                "note": "CPU includes generating the JSON in process"})
        r["records_per_cpu_s"] = r["records"] / r["cpu_s"] if r["cpu_s"] else None
        return r

    # -- stage: CPU ceiling of the engine core ------------------------------------------------

    def stage_core_ceiling(self) -> dict | None:
        """The raw arrow-json decode + Parquet encode speed of the same rows, one thread.

        Runs `cargo bench --bench core_ceiling -- --records N --out FILE` (benches/core_ceiling.rs:
        the engine's decode_batch + snappy encode_parquet of the seed-42 transactions, batches of
        50,000, records per CPU-second). `--core-ceiling-file` uses a figure file written earlier
        instead; `--core-ceiling-cmd` replaces the command (it must write that file).
        """
        path = self.a.core_ceiling_file or os.environ.get("CARFLOW_BENCH_CORE_CEILING")
        cmd = self.a.core_ceiling_cmd
        if not path:
            path = str(self.work / "core-ceiling.json")
            cmd = cmd or f"cargo bench --bench core_ceiling -- --records {self.n} --out {path}"
        if cmd:
            log(f"core ceiling: running {cmd}")
            out = subprocess.run(cmd, shell=True, cwd=REPO, timeout=self.a.timeout,
                                 stdin=subprocess.DEVNULL)
            if out.returncode != 0:
                raise BenchError(f"core ceiling: `{cmd}` exited {out.returncode}")
        if not Path(path).is_file():
            raise BenchError(f"core ceiling: no figure file at {path}")
        fig = json.loads(Path(path).read_text())
        return {"system": "decode + Parquet encode", "what": "CPU ceiling of the engine core",
                "records_per_cpu_s": float(fig["records_per_cpu_s"]), "source": fig.get("source", path),
                "figure": fig}

    # -- stage: latency ---------------------------------------------------------------------------

    def stage_latency(self) -> dict:
        """POST → lake and POST → InfluxDB latency at fixed rates, through `carflow api` and `carflow run`.

        A fresh topic (deleted at the end), consumer group, HDFS lake and InfluxDB database of this
        run; `deploy/carflow.toml` unchanged otherwise. See LatencyLoad for what is measured.
        """
        a = self.a
        steps = []
        for r in (x.strip() for x in a.latency_rates.split(",") if x.strip()):
            if r == "max":
                steps.append(("max", None, a.latency_max_batch))
            else:
                rate = float(r)
                if rate <= 0:
                    raise BenchError(f"--latency-rates: {r} is not a rate (tx/s) or `max`")
                steps.append((f"{rate:g}", rate, max(1, round(rate / a.latency_posts_per_s))))
        topic = f"bench-{self.run_id}-latency"
        kafka_tool(self.kafka_cp, "org.apache.kafka.tools.TopicCommand", "--create", "--topic", topic,
                   "--partitions", str(a.partitions), "--replication-factor", "1")
        self.created_topics.append(topic)
        db = self.influx_db("latency")
        lake = f"{HDFS}{self.hdfs_root}/latency"
        run_port, api_port = free_port(), free_port()
        env = dict(os.environ)
        env.update({
            "CARFLOW_KAFKA_TOPIC": topic,
            "CARFLOW_KAFKA_GROUP_ID": f"bench-{self.run_id}-latency",
            "CARFLOW_LAKE_ROOT": lake,
            "CARFLOW_INFLUX_BUCKET": db,
            "CARFLOW_HTTP_LISTEN": f"127.0.0.1:{run_port}",
            "CARFLOW_API_LISTEN": f"127.0.0.1:{api_port}",
            "CARFLOW_QUERIES_DIR": str(REPO / "queries"),
        })
        run = Measured("carflow run (latency)", [a.carflow, "run", "--config", str(CONFIG), "--engine-id", "bench-latency"],
                       self.work / "latency-run.log", env=env)
        api = Measured("carflow api (latency)", [a.carflow, "api", "--config", str(CONFIG)],
                       self.work / "latency-api.log", env=env)
        run_url, api_url = f"http://127.0.0.1:{run_port}", f"http://127.0.0.1:{api_port}"
        load = None
        try:
            t_launch = time.time()
            for m, url in ((run, run_url), (api, api_url)):
                wait_healthy(m, url, a.latency_startup_s)
            startup_s = time.time() - t_launch
            # The bodies: the API's own generator (seeded), with transaction_id and sold_at replaced
            # at send time (ids unique to the run, sold_at = the wall clock when the POST is built).
            lines = http("GET", f"{api_url}/api/stream_car_transactions?seed={a.seed}&count=1000&rate=10000",
                         timeout=60).decode().splitlines()
            templates = []
            for line in lines:
                if not line.strip():
                    continue
                rec = json.loads(line)
                t = re.sub(r'"transaction_id":"[^"]*"', '"transaction_id":"\x01"', line, count=1)
                t = re.sub(r'"sold_at":"[^"]*"', '"sold_at":"\x02"', t, count=1)
                if t.count("\x01") != 1 or t.count("\x02") != 1 or t.index("\x01") > t.index("\x02"):
                    raise BenchError(f"unexpected transaction from the API's stream: {line[:300]}")
                head, rest = t.split("\x01")
                mid, tail = rest.split("\x02")
                templates.append(([head, mid, tail], rec["brand"]))
            if not templates:
                raise BenchError("the API's stream gave no transactions")
            load = LatencyLoad(api_port, hdfs_path(lake), db, templates, f"{self.run_id}", a.latency_poll_s)
            load.start_watching()

            def records_in() -> float:
                try:
                    return metric_values(http("GET", f"{run_url}/metrics", timeout=5).decode()).get(
                        "carflow_records_in_total", 0)
                except (urllib.error.URLError, OSError):
                    return -1

            def drain(what: str) -> float:
                t0 = time.time()
                while records_in() < load.acked:
                    for m in (run, api):
                        if m.poll() is not None:
                            raise BenchError(f"{m.name} exited {m.rc} during {what}:\n{m.tail()}")
                    if time.time() - t0 > a.latency_drain_s:
                        raise BenchError(f"latency {what}: carflow read {records_in():.0f} of {load.acked} "
                                         f"acknowledged records after {a.latency_drain_s:.0f}s:\n{run.tail()}")
                    time.sleep(0.1)
                return time.time() - t0

            # Warm-up (not sampled): the consumer group's assignment, the first dt directory, the
            # first window points.
            warm = load.run_step("warmup", None, 30.0, 100, 1, 0, sample=False, max_posts=1)
            if warm["acked"] != 100:
                raise BenchError(f"latency warm-up: the API acknowledged {warm['acked']} of 100 records "
                                 f"({warm['statuses']}, {warm['client_errors']}):\n{api.tail()}")
            warm_s = drain("warm-up")
            results = []
            for label, rate, batch in steps:
                log(f"  latency step {label} tx/s: {batch} records per POST, {a.latency_step_s:.0f}s ...")
                n0 = len(load.samples)
                st = load.run_step(label, rate, a.latency_step_s, batch, a.latency_workers, a.latency_samples)
                st["drain_s"] = drain(f"step {label}")
                # the watcher's next polls see the last files and points
                t0 = time.time()
                while time.time() - t0 < 10 * a.latency_poll_s + 5:
                    with load.lock:
                        if all(s["t_count"] is not None for s in load.samples[n0:]):
                            break
                    time.sleep(a.latency_poll_s)
                time.sleep(2 * a.latency_poll_s)
                st["samples"] = len(load.samples) - n0
                results.append(st)
                log(f"    acknowledged {st['acked']:,} in {st['duration_s']:.0f}s = {st['rate_achieved']:,.0f} tx/s, "
                    f"answers {st['statuses']}, {st['samples']} samples, drained in {st['drain_s']:.1f}s")
            load.stop_watching()
            # Where each sample is: its Kafka partition and offset, read back through `carflow sql`
            # (which proves it readable), then the listing that first showed the file holding it.
            where: dict[str, tuple[int, int]] = {}
            ids = [s["id"] for s in load.samples]
            for i in range(0, len(ids), 500):
                in_list = ",".join(f"'{x}'" for x in ids[i:i + 500])
                for row in carflow_sql(a.carflow, lake,
                                       f"SELECT transaction_id, _partition, _offset FROM cars WHERE transaction_id IN ({in_list})",
                                       timeout=600):
                    where[row["transaction_id"]] = (int(row["_partition"]), int(row["_offset"]))
            vals = metric_values(http("GET", f"{run_url}/metrics", timeout=5).decode())
        finally:
            if load is not None:
                load.stop_watching()
            for m in (api, run):
                if m.poll() is None:
                    m.stop(grace=60)
        missing_lake = missing_influx = 0
        for s in load.samples:
            s["lake_s"] = s["influx_s"] = None
            pos = where.get(s["id"])
            t_file = None
            if pos:
                p, off = pos
                s["partition"], s["offset"] = p, off
                t_file = min((t for (fp, first, last), t in load.files_seen.items() if fp == p and first <= off <= last),
                             default=None)
            if t_file is None:
                missing_lake += 1
            else:
                s["lake_s"] = t_file - s["t_ack"]
            if s["t_count"] is None or t_file is None:
                missing_influx += 1
            else:
                s["influx_s"] = max(s["t_count"], t_file) - s["t_ack"]
        for st in results:
            mine = [s for s in load.samples if s["step"] == st["step"]]
            for what in ("lake", "influx"):
                v = [s[f"{what}_s"] for s in mine if s[f"{what}_s"] is not None]
                st[what] = {"n": len(v), "p50_s": pct(v, 0.5), "p99_s": pct(v, 0.99),
                            "max_s": max(v) if v else None, "min_s": min(v) if v else None,
                            "missing": len(mine) - len(v)}
        linger = parse_duration_s(self.linger)
        acked = load.acked
        self.check("latency: lake rows == acknowledged records",
                   vals.get('carflow_rows_out_total{sink="lake",target="cars"}', 0), acked)
        self.check("latency: dead letters == 0", vals.get("carflow_dead_letters_total", 0), 0)
        self.check("latency: samples found in the lake and InfluxDB (missing)", missing_lake + missing_influx, 0)
        return {
            "system": "carflow latency", "what": "POST /api/logs 200 → row in the lake / its minute point in InfluxDB",
            "topic": topic, "lake": lake, "influx_db": db, "linger_s": linger, "goal_p99_s": linger + 1.0,
            "batch_max_rows": self.batch_max_rows, "poll_s": a.latency_poll_s,
            "polls": load.polls, "poll_errors": load.poll_errors, "startup_s": startup_s,
            "warmup": {**warm, "drain_s": warm_s}, "steps": results, "acked_total": acked,
            "lake_files_seen": len(load.files_seen),
            "carflow_run": {"cpu_s": run.cpu_seconds(), "peak_rss_mb": run.peak_rss_bytes() / 1e6, "exit_code": run.rc,
                            "log": str(run.log_path), "metrics_at_end": vals},
            "carflow_api": {"cpu_s": api.cpu_seconds(), "peak_rss_mb": api.peak_rss_bytes() / 1e6, "exit_code": api.rc,
                            "log": str(api.log_path)},
            "samples": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items() if k != "key"}
                        | {"brand": s["key"][0], "minute_ms": s["key"][1]} for s in load.samples],
            "load_avg_at_start": self.stage_load,
            "note": ("lake: first WebHDFS listing of cars/dt=*/ showing the sample's file (polled every poll_s); "
                     "influx: first poll with sales_by_brand(brand, minute).sales >= records of that key "
                     "acknowledged up to the sample's answer, not before its lake file"),
        }

    # -- stage: lake files ------------------------------------------------------------------------

    def stage_files(self) -> dict:
        """Files of a lake (this run's carflow stage, else its latency stage, else --files-lake):
        per dataset, per (dt, Kafka partition), mean size; and `carflow sql` GROUP BY times."""
        a = self.a
        want_rows = None
        if a.files_lake:
            lake, source = a.files_lake, "--files-lake"
        elif "carflow" in self.results:
            lake, source = self.results["carflow"]["lake"], "carflow"
            want_rows = self.n
        elif "latency" in self.results:
            lake, source = self.results["latency"]["lake"], "latency"
            want_rows = self.results["latency"]["acked_total"]
        else:
            raise BenchError("stage files: no lake to look at; run it after carflow or latency "
                             "(--stages carflow,files) or pass --files-lake hdfs://127.0.0.1:9000/…")
        root = hdfs_path(lake)
        t0 = time.time()
        files = lake_walk(root, a.files_max)
        list_s = time.time() - t0
        datasets = lake_file_stats(files)
        if "cars" not in datasets:
            raise BenchError(f"stage files: no Parquet files under {lake}/cars")
        sql = a.files_query
        runs = []
        rows = None
        for i in range(a.files_query_runs):
            cmd = [a.carflow, "sql", "--config", str(CONFIG), "--lake", lake, "--quiet", "--format", "csv", "-c", sql]
            m = Measured(f"carflow sql #{i + 1}", cmd, self.work / f"files-sql-{i + 1}.log")
            rc = m.wait(a.timeout)
            if rc is None:
                m.stop(grace=10)
                raise BenchError(f"carflow sql: not done after {a.timeout:.0f}s:\n{m.tail()}")
            if rc != 0:
                raise BenchError(f"carflow sql exited {rc}:\n{m.tail()}")
            # the CSV from its header on (stderr shares the log; carflow sql --quiet writes nothing there)
            lines = m.log_path.read_text(errors="replace").splitlines()
            hdr = next((i for i, l in enumerate(lines) if "n" in [c.strip() for c in l.split(",")]), None)
            out = list(csv.DictReader(lines[hdr:])) if hdr is not None else []
            runs.append({"wall_s": m.t_exit - m.t_start, "cpu_s": m.cpu_seconds(), "peak_rss_mb": m.peak_rss_bytes() / 1e6})
            try:
                rows = sum(int(r["n"]) for r in out)
            except (KeyError, ValueError, TypeError):
                rows = None
        if want_rows is not None and "count(*) as n" in sql.lower().replace('"', ""):
            self.check(f"files: carflow sql count over cars == {source} lake rows", rows, want_rows)
        walls = [r["wall_s"] for r in runs]
        return {
            "system": "lake files", "what": f"the lake of stage {source}: files, sizes, carflow sql GROUP BY time",
            "lake": lake, "source": source, "list_s": list_s, "datasets": datasets,
            "query": sql, "query_rows_counted": rows, "query_runs": runs,
            "query_s_first": walls[0] if walls else None,
            "query_s_median": statistics.median(walls) if walls else None,
            "load_avg_at_start": self.stage_load,
            "note": "query wall time = carflow sql process launch → exit (binary start, HDFS listing, read, aggregate)",
        }

    # -- stage: soak ----------------------------------------------------------------------------

    def stage_soak(self) -> dict:
        """A steady live stream (event times from the wall clock) at --soak-rate tx/s for
        --soak-duration into a topic of its own, consumed by two engines in separate groups, so both
        see the same records: one with the default settings (merging small files) and, as the
        baseline of the same run, one with lake.compact_files = 0. Reports each engine's RSS by
        quarter of the stream (flat?), its lake's files per (dt, Kafka partition), and carflow sql
        over each lake."""
        a = self.a
        topic = f"bench-{self.run_id}-soak"
        kafka_tool(self.kafka_cp, "org.apache.kafka.tools.TopicCommand", "--create", "--topic", topic,
                   "--partitions", str(a.partitions), "--replication-factor", "1")
        self.created_topics.append(topic)
        engines: dict[str, dict] = {}
        for label, extra in [("merging", {}), ("no-merging", {"CARFLOW_LAKE_COMPACT_FILES": "0"})]:
            port = free_port()
            lake = f"{HDFS}{self.hdfs_root}/soak-{label}"
            env = dict(os.environ)
            env.update({
                "CARFLOW_KAFKA_TOPIC": topic,
                "CARFLOW_KAFKA_GROUP_ID": f"bench-{self.run_id}-soak-{label}",
                "CARFLOW_LAKE_ROOT": lake,
                "CARFLOW_INFLUX_BUCKET": self.influx_db(f"soak_{label}"),
                "CARFLOW_HTTP_LISTEN": f"127.0.0.1:{port}",
                **extra,
            })
            cmd = [a.carflow, "run", "--config", str(CONFIG), "--engine-id", f"soak-{label}"]
            engines[label] = {"m": Measured(f"carflow run ({label})", cmd, self.work / f"soak-{label}.log", env=env,
                                            interval=1.0),
                              "base": f"http://127.0.0.1:{port}", "lake": lake, "settings": extra}
        for e in engines.values():
            wait_healthy(e["m"], e["base"], 120, poll_s=0.2)
        duration_s = parse_duration_s(a.soak_duration)
        gen_cmd = [a.carflow, "generate", "--config", str(CONFIG), "--topic", topic, "--rate", str(a.soak_rate),
                   "--duration", a.soak_duration, "--live", "--seed", str(a.seed)]
        log(f"  soak: {a.soak_rate:g} tx/s for {a.soak_duration} into {topic}, engines merging / not merging")
        gen = Measured("carflow generate (soak)", gen_cmd, self.work / "soak-generate.log", interval=5.0)
        t_gen = time.time()
        rc = gen.wait(duration_s + 300)
        t_gen_end = time.time()
        if rc != 0:
            gen.stop(grace=10)
            raise BenchError(f"carflow generate exited {rc}:\n{gen.tail()}")
        offs = topic_offsets(self.kafka_cp, topic) or {}
        produced = sum(l - e for e, l in offs.values())
        out: dict = {"system": "soak", "rate": a.soak_rate, "duration_s": duration_s, "produced": produced,
                     "topic": topic, "engines": {}}
        for label, e in engines.items():
            m, vals = e["m"], {}
            drain_deadline = time.time() + a.latency_drain_s
            while time.time() < drain_deadline:
                try:
                    vals = metric_values(http("GET", f"{e['base']}/metrics", timeout=5).decode())
                except (urllib.error.URLError, OSError):
                    vals = {}
                # A message delivered again (after a rebalance or a broker restart) is counted in
                # records_in and in replayed.
                fresh = vals.get("carflow_records_in_total", 0) - vals.get("carflow_replayed_total", 0)
                if fresh >= produced:
                    break
                time.sleep(0.5)
            self.check(f"soak ({label}): records in - replayed == produced",
                       vals.get("carflow_records_in_total", 0) - vals.get("carflow_replayed_total", 0), produced)
            m.stop(grace=60)
            quarters = []
            span = (t_gen_end - t_gen) / 4
            with m._lock:
                timeline = list(m.timeline)
            for q in range(4):
                lo, hi = t_gen + q * span, t_gen + (q + 1) * span
                rss = [r for (t, _c, r) in timeline if lo <= t < hi]
                quarters.append(max(rss) / 1e6 if rss else None)
            files = lake_walk(hdfs_path(e["lake"]), a.files_max)
            stats = lake_file_stats(files)
            runs = []
            rows = None
            for _ in range(a.files_query_runs):
                t0 = time.time()
                got = carflow_sql(a.carflow, e["lake"], a.files_query, a.timeout)
                runs.append(time.time() - t0)
                try:
                    rows = sum(int(r["n"]) for r in got)
                except (KeyError, ValueError, TypeError):
                    rows = None
            if "count(*) as n" in a.files_query.lower().replace('"', ""):
                self.check(f"soak ({label}): carflow sql count over cars == produced", rows, produced)
            out["engines"][label] = {
                "settings": e["settings"], "lake": e["lake"], "cpu_s": m.cpu_seconds(),
                "peak_rss_mb": m.peak_rss_bytes() / 1e6, "peak_anon_mb": m.peak_anon / 1e6,
                "rss_mb_by_quarter": quarters, "datasets": stats,
                "merges": vals.get("carflow_lake_merges_total"),
                "files_merged": vals.get("carflow_lake_files_merged_total"),
                "late_rows": vals.get("carflow_late_rows_total"),
                "replayed": vals.get("carflow_replayed_total"),
                "query_s": runs, "query_s_median": statistics.median(runs) if runs else None,
            }
        return out

    # -- helpers ------------------------------------------------------------------------------

    def _result(self, system: str, what: str, m: Measured, *, records: int, t_ready, t_done,
                proc_s: float | None = None, extra: dict | None = None) -> dict:
        wall = (t_done - m.t_start) if t_done else None
        if proc_s is None and t_done:
            proc_s = t_done - (t_ready or m.t_start)
        cpu = m.cpu_seconds()
        cpu_proc = None
        if t_ready and t_done:
            cpu_proc = m.cpu_at(t_done) - m.cpu_at(t_ready)
        r = {
            "system": system, "what": what, "records": records,
            "wall_s": wall, "startup_s": (t_ready - m.t_start) if t_ready else None, "proc_s": proc_s,
            "records_per_s": records / proc_s if proc_s else None,
            "records_per_s_wall": records / wall if wall else None,
            "mb_per_s": None,  # set by finalize(), from one byte count for every system
            "cpu_s": cpu, "cpu_s_per_million": cpu / records * 1e6 if records else None,
            "cpu_s_processing": cpu_proc,
            "cpu_s_per_million_processing": cpu_proc / records * 1e6 if records and cpu_proc else None,
            "load_avg_at_start": self.stage_load,
            "peak_rss_mb": m.peak_rss_bytes() / 1e6, "peak_anon_mb": m.peak_anon / 1e6, "exit_code": m.rc,
            "command": " ".join(m.cmd if "-cp" not in m.cmd else [c if len(c) < 200 else "<classpath>" for c in m.cmd]),
            "log": str(m.log_path),
        }
        r.update(extra or {})
        return r

    def finalize(self) -> None:
        if not self.topic_bytes and self.perf_bytes:
            self.topic_bytes = self.perf_bytes
        for r in self.results.values():
            if self.topic_bytes and r.get("proc_s"):
                r["mb_per_s"] = self.topic_bytes / 1e6 / r["proc_s"]

    def check(self, what: str, got, want) -> None:
        ok = got == want
        self.checks.append({"check": what, "got": got, "want": want, "ok": ok})
        if not ok:
            log(f"CHECK FAILED: {what}: got {got}, want {want}")


SPARK_DESCR = {
    "stateful": "Structured Streaming: file sink + 5 watermarked aggregations (update mode, foreachBatch → Influx)",
    "recompute": "Structured Streaming: 1 query, foreachBatch appends lake + recomputes touched windows",
}


def spark_interval(s: str) -> str:
    m = re.fullmatch(r"(\d+)\s*(ms|s|m|h)", s.strip())
    if not m:
        return s
    unit = {"ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours"}[m.group(2)]
    return f"{m.group(1)} {unit}"


def iso_epoch(s: str) -> float:
    return dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------------------------
# Report


def fmt(v, spec="{:,.0f}", none="n/a") -> str:
    return none if v is None else spec.format(v)


def report(b: Bench, started: float) -> str:
    res = b.results
    rows = []
    for key in ["kafka", "carflow", "spark-stateful", "spark-recompute", "demo"]:
        r = res.get(key)
        if not r:
            continue
        rows.append([
            r["system"], fmt(r["records"]), fmt(r["startup_s"], "{:.1f}"), fmt(r["proc_s"], "{:.1f}"),
            fmt(r["records_per_s"]), fmt(r["records_per_s_wall"]), fmt(r["mb_per_s"], "{:.1f}"),
            fmt(r["cpu_s_per_million"], "{:.1f}"), fmt(r.get("cpu_s_per_million_processing"), "{:.1f}", "-"),
            fmt(r["peak_rss_mb"]),
        ])
    hdr = ["system", "records", "start s", "proc s", "rec/s", "rec/s wall", "MB/s", "CPU s/1M", "(proc)",
           "peak RSS MB"]
    widths = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    line = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(hdr), line(["-" * w for w in widths])] + [line(r) for r in rows]

    ratios = []
    cf, ka, dm, cc = res.get("carflow"), res.get("kafka"), res.get("demo"), res.get("core-ceiling")
    for key in ["spark-stateful", "spark-recompute"]:
        sp = res.get(key)
        if cf and sp:
            ratios.append(f"carflow vs {sp['system']}: {cf['records_per_s'] / sp['records_per_s']:.1f}x rec/s "
                          f"({cf['records_per_s_wall'] / sp['records_per_s_wall']:.1f}x counting start-up), "
                          f"{sp['cpu_s_per_million'] / cf['cpu_s_per_million']:.1f}x less CPU per record, "
                          f"{sp['peak_rss_mb'] / cf['peak_rss_mb']:.1f}x less peak memory")
    if cf and ka:
        ratios.append(f"carflow as % of Kafka's ceiling (ConsumerPerformance fetch rate): "
                      f"{100 * cf['records_per_s'] / ka['records_per_s']:.0f}%")
    if dm:
        per_core = dm["records_per_cpu_s"]
        s = f"engine core (demo): {per_core:,.0f} records per CPU-second"
        if cc:
            s += f" = {100 * per_core / cc['records_per_cpu_s']:.0f}% of the decode+encode ceiling " \
                 f"({cc['records_per_cpu_s']:,.0f}/CPU-s, {cc['source']})"
        else:
            s += "; decode+encode ceiling: n/a (stage core-ceiling not run)"
        ratios.append(s)
    fig = (cc or {}).get("figure") or {}
    if fig.get("decode_per_cpu_s") and fig.get("reference_decode_per_cpu_s"):
        ratios.append(f"decode alone: {fig['decode_per_cpu_s']:,.0f} records per CPU-second = "
                      f"{fig['decode_per_cpu_s'] / fig['reference_decode_per_cpu_s']:.2f}x arrow-json alone "
                      f"({fig['reference_decode_per_cpu_s']:,.0f}/CPU-s, the decoder before the specialised one)")
    if cf:
        anon = cf.get("peak_anon_mb")
        target = 256 * 1024 * 1024 / 1e6
        ratios.append(f"carflow peak RSS {cf['peak_rss_mb']:,.0f} MB = {cf['peak_rss_mb'] / target:.2f}x the 256 MiB goal"
                      + (f" (anonymous memory {anon:,.0f} MB; the rest is file-backed, mostly the binary's code)"
                         if anon else "")
                      + f"; CPU {cf['cpu_s']:.1f}s for {cf['records']:,} records")
        m = cf.get("metrics_at_done") or {}
        n = m.get("carflow_lake_stage_seconds_count") or 0
        if n:
            slow = n - (m.get('carflow_lake_stage_seconds_bucket{le="0.32"}') or 0)
            waited = m.get('carflow_batch_step_seconds_total{step="lake_commit"}', 0)
            ratios.append(f"carflow lake commits: {n:,.0f} partition commits, staging mean "
                          f"{m.get('carflow_lake_stage_seconds_sum', 0) / n:.3f} s ({slow:,.0f} over 0.32 s: "
                          f"the namenode's complete() retried after 500 ms), publishing mean "
                          f"{m.get('carflow_lake_publish_seconds_sum', 0) / n:.3f} s; staged while the previous "
                          f"commit landed {m.get('carflow_lake_commits_prestaged_total', 0):,.0f} (discarded "
                          f"{m.get('carflow_lake_prestages_discarded_total', 0):,.0f}); batch wait for the commit "
                          f"in flight {waited:.1f} s")
    lat, fl = res.get("latency"), res.get("files")
    extra: list[str] = []
    if lat:
        goal = lat["goal_p99_s"]
        for st in lat["steps"]:
            lk, ix = st["lake"], st["influx"]
            if lk["p99_s"] is None and ix["p99_s"] is None:
                continue
            ratios.append(f"latency p99 at {st['step']} tx/s ({st['rate_achieved']:,.0f} achieved): lake "
                          f"{fmt(lk['p99_s'], '{:.2f}')} s, InfluxDB {fmt(ix['p99_s'], '{:.2f}')} s = "
                          f"{fmt(lk['p99_s'] / goal if lk['p99_s'] is not None else None, '{:.2f}')}x / "
                          f"{fmt(ix['p99_s'] / goal if ix['p99_s'] is not None else None, '{:.2f}')}x the goal "
                          f"(linger {lat['linger_s']:g} s + 1 s = {goal:g} s)")
        lrows = [[st["step"], fmt(st["rate_achieved"]), str(st["records_per_post"]), str(st["lake"]["n"]),
                  fmt(st["lake"]["p50_s"], "{:.2f}"), fmt(st["lake"]["p99_s"], "{:.2f}"), fmt(st["lake"]["max_s"], "{:.2f}"),
                  fmt(st["influx"]["p50_s"], "{:.2f}"), fmt(st["influx"]["p99_s"], "{:.2f}"),
                  fmt(st["influx"]["max_s"], "{:.2f}"),
                  str(sum(v for k, v in st["statuses"].items() if k != "200"))] for st in lat["steps"]]
        lhdr = ["tx/s offered", "achieved", "per POST", "samples", "lake p50", "p99", "max", "Influx p50", "p99",
                "max", "non-200"]
        lw = [max(len(str(x[i])) for x in lrows + [lhdr]) for i in range(len(lhdr))]
        lline = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                        for i, (c, w) in enumerate(zip(cells, lw)))
        run = lat["carflow_run"]
        extra += ["", f"latency, seconds from POST /api/logs answered 200 to the row in the lake / its minute's point "
                      f"in InfluxDB (batch linger {lat['linger_s']:g} s, goal p99 <= {lat['goal_p99_s']:g} s; "
                      f"polled every {lat['poll_s']:g} s; carflow run: CPU {run['cpu_s']:.1f} s, "
                      f"peak RSS {run['peak_rss_mb']:,.0f} MB):",
                  lline(lhdr), lline(["-" * w for w in lw]), *[lline(r) for r in lrows]]
    if fl:
        cars = fl["datasets"]["cars"]
        fp = cars["files_per_dt_partition"]
        ratios.append(f"lake files ({fl['source']} lake): cars {cars['files']:,} files, "
                      f"{fp['mean']:,.1f} per (dt, Kafka partition) (max {fp['max']:,}), mean "
                      f"{cars['mean_file_mb']:.2f} MB; carflow sql GROUP BY over cars "
                      f"{fmt(fl['query_s_median'], '{:.2f}')} s (median of {len(fl['query_runs'])}, "
                      f"first {fmt(fl['query_s_first'], '{:.2f}')} s)")
        extra += ["", f"lake files of stage {fl['source']} ({fl['lake']}):"]
        for name, d in sorted(fl["datasets"].items()):
            fp = d["files_per_dt_partition"]
            extra.append(f"  {name}: {d['files']:,} files, {d['bytes'] / 1e6:,.1f} MB, mean {d['mean_file_mb']:.3f} MB/file; "
                         f"per dt {d['by_dt']}; per Kafka partition {dict(sorted(d['by_partition'].items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1))}; "
                         f"per (dt, partition) min {fp['min']} mean {fp['mean']:.1f} max {fp['max']}")
        extra.append(f"  carflow sql -c \"{fl['query']}\": " + ", ".join(
            f"{r['wall_s']:.2f} s ({r['cpu_s']:.1f} CPU s, {r['peak_rss_mb']:,.0f} MB)" for r in fl["query_runs"])
            + (f"; {fl['query_rows_counted']:,} rows counted" if fl.get("query_rows_counted") is not None else ""))

    sk = res.get("soak")
    if sk:
        extra += ["", f"soak: {sk['rate']:g} tx/s for {sk['duration_s']:.0f} s (event times from the wall clock), "
                      f"{sk['produced']:,} records, two engines on the same records:"]
        shdr = ["engine", "cars files", "per (dt, partition) mean", "max", "mean MB", "merges", "sql s",
                "RSS MB by quarter", "peak anon MB", "CPU s"]
        srows = []
        for label, e in sk["engines"].items():
            cars = e["datasets"].get("cars") or {}
            fp = cars.get("files_per_dt_partition") or {}
            srows.append([label, fmt(cars.get("files")), fmt(fp.get("mean"), "{:.1f}"), fmt(fp.get("max")),
                          fmt(cars.get("mean_file_mb"), "{:.2f}"), fmt(e.get("merges")),
                          fmt(e.get("query_s_median"), "{:.2f}"),
                          " / ".join(fmt(q) for q in e["rss_mb_by_quarter"]), fmt(e["peak_anon_mb"]),
                          fmt(e["cpu_s"], "{:.1f}")])
        sw = [max(len(str(x[i])) for x in srows + [shdr]) for i in range(len(shdr))]
        sline = lambda cells: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                                        for i, (c, w) in enumerate(zip(cells, sw)))
        extra += [sline(shdr), sline(["-" * w for w in sw]), *[sline(r) for r in srows]]
        mg, nm = sk["engines"].get("merging"), sk["engines"].get("no-merging")
        if mg and nm and mg["datasets"].get("cars") and nm["datasets"].get("cars"):
            fa, fb = mg["datasets"]["cars"]["files"], nm["datasets"]["cars"]["files"]
            ratios.append(f"soak at {sk['rate']:g} tx/s for {sk['duration_s'] / 60:.0f} min: merging leaves "
                          f"{fa:,} cars files vs {fb:,} without ({fb / fa:.1f}x fewer); carflow sql GROUP BY "
                          f"{fmt(mg['query_s_median'], '{:.2f}')} s vs {fmt(nm['query_s_median'], '{:.2f}')} s; "
                          f"RSS by quarter {' / '.join(fmt(q) for q in mg['rss_mb_by_quarter'])} MB")

    failed = [c for c in b.checks if not c["ok"]]
    checks = [f"DIFF {c['check'].split(':')[0]}: {c['difference']}" if c.get("difference") else
              f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']} ({describe(c)})" for c in b.checks]
    infl = []
    for key in ["carflow", "spark-stateful", "spark-recompute"]:
        r = res.get(key)
        if r and r.get("influx"):
            infl.append(f"{r['system']:<18} " + "  ".join(
                f"{m}={v['points']}pts/{v['sales']}" for m, v in r["influx"].items()))
    txt = "\n".join([
        f"carflow benchmark {dt.datetime.fromtimestamp(started).isoformat(timespec='seconds')} — "
        + (f"{b.n:,} transactions, topic {b.topic} ({b.partitions} partitions)" if b.topic_used else
         f"stages {', '.join(k for k in res)} (the bench topic is not used)") + f", carflow {b.a.carflow}",
        f"host: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
        f"MB = 10^6 bytes of Kafka messages ({(b.topic_bytes or 0) / 1e6:,.1f} MB in the topic)",
        "", *out, "", *ratios, *extra, "",
        "outputs (InfluxDB points / total `sales` per measurement):", *infl, "",
        "checks:", *checks,
        *(["", f"{len(failed)} CHECK(S) FAILED"] if failed else []),
    ])
    return txt


def describe(c: dict) -> str:
    got, want = c["got"], c["want"]
    if isinstance(got, dict) and isinstance(want, dict):
        if c["ok"]:
            return f"{len(got)} measurements, identical"
        diff = {k: (got.get(k), want.get(k)) for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)}
        return "differ: " + "; ".join(f"{k}: got {g}, want {w}" for k, (g, w) in diff.items())
    return f"got {got}, want {want}"


def write_outputs(b: Bench, txt: str, started: float, argv: list[str]) -> Path:
    day = dt.date.fromtimestamp(started).isoformat()
    out_dir = Path(b.a.results_dir or REPO / "benches" / "results" / day)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"bench-{b.n}-{time.strftime('%H%M%S', time.localtime(started))}"
    doc = {
        "date": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "command": "benches/harness/run.sh " + " ".join(argv),
        "records": b.n, "topic": b.topic, "partitions": b.partitions, "seed": b.a.seed,
        "carflow_binary": b.a.carflow, "carflow_version": carflow_version(b.a.carflow),
        "carflow_binary_mtime": dt.datetime.fromtimestamp(Path(b.a.carflow).stat().st_mtime).isoformat(timespec="seconds"),
        "git": git_rev(),
        "host": {"cpus": os.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
                 "load_avg_at_start": b.load_at_start},
        "topic_bytes": b.topic_bytes, "topic_bytes_consumer_perf": b.perf_bytes, "results": b.results, "checks": b.checks,
    }
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=2, default=str))
    (out_dir / f"{stem}.txt").write_text(txt + "\n")
    cols = ["system", "records", "wall_s", "startup_s", "proc_s", "records_per_s", "records_per_s_wall",
            "mb_per_s", "cpu_s", "cpu_s_per_million", "cpu_s_processing", "cpu_s_per_million_processing",
            "peak_rss_mb", "records_per_cpu_s"]
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in b.results.values():
            w.writerow([r.get(c) if not isinstance(r.get(c), float) else round(r.get(c), 3) for c in cols])
    try:
        chart(b, out_dir / f"{stem}.png")
    except Exception as e:  # noqa: BLE001 - the numbers matter more than the picture
        log(f"chart failed: {e}")
    return out_dir / stem


def chart(b: Bench, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ["kafka", "carflow", "spark-stateful", "spark-recompute", "demo"] if k in b.results]
    names = [b.results[k]["system"].replace(" (engine core)", "\n(engine core)").replace("Kafka ", "Kafka\n")
             .replace("Spark ", "Spark\n") for k in keys]
    colors = {"kafka": "#999999", "carflow": "#d62728", "spark-stateful": "#1f77b4",
              "spark-recompute": "#6baed6", "demo": "#ff9896"}
    panels = [("records_per_s", "transactions / s (processing)", "{:,.0f}"),
              ("cpu_s_per_million", "CPU seconds per 1M transactions", "{:,.0f}"),
              ("peak_rss_mb", "peak RSS (MB, process tree)", "{:,.0f}")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    for ax, (field, title, spec) in zip(axes, panels):
        vals = [b.results[k].get(field) or 0 for k in keys]
        bars = ax.bar(range(len(keys)), vals, color=[colors[k] for k in keys])
        ax.set_xticks(range(len(keys)), names, fontsize=8)
        ax.set_title(title, fontsize=10)
        for bar, v in zip(bars, vals):
            ax.annotate(spec.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"carflow vs Spark Structured Streaming vs Kafka ceiling — {b.n:,} transactions, "
                 f"{os.cpu_count()} cores ({dt.date.today().isoformat()})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001
        return None


def carflow_version(binary: str) -> str | None:
    try:
        return subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        return None


def default_carflow() -> str:
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return str(target / "release" / "carflow")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", "-n", type=int, default=1_000_000, help="transactions (default 1,000,000)")
    p.add_argument("--carflow", default=os.environ.get("CARFLOW_BIN") or default_carflow(),
                   help="carflow binary (default $CARFLOW_BIN, else $CARGO_TARGET_DIR/release/carflow)")
    p.add_argument("--topic", help="topic (default bench-<records>; created and filled once, then reused)")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per stage (default 300 + 3 ms per record)")
    p.add_argument("--spark-cores", type=int, default=2, help="local[N] (default 2: every core here)")
    p.add_argument("--spark-max-offsets", type=int, default=None,
                   help="maxOffsetsPerTrigger (default: carflow's batch.max_rows, so both use the same "
                        "micro-batch size); 0 = one batch with everything")
    p.add_argument("--spark-shuffle-partitions", type=int, default=None, help="default: --spark-cores")
    p.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark setting (recorded in the results)")
    p.add_argument("--spark-java-home", help="JAVA_HOME for Spark (default: java on PATH)")
    p.add_argument("--core-ceiling-file", help="JSON {records_per_cpu_s, source} written earlier by benches/core_ceiling.rs (skips running it)")
    p.add_argument("--core-ceiling-cmd", help="command that writes the figure file (default: cargo bench --bench core_ceiling ...)")
    g = p.add_argument_group("stage latency")
    g.add_argument("--latency-rates", default="1000,10000,max",
                   help="steps, tx/s, `max` = as fast as the API answers (default 1000,10000,max)")
    g.add_argument("--latency-step-s", type=float, default=20.0, help="seconds of posting per step (default 20)")
    g.add_argument("--latency-posts-per-s", type=float, default=20.0,
                   help="POSTs per second at a fixed rate; records per POST = rate / this (default 20)")
    g.add_argument("--latency-max-batch", type=int, default=1000, help="records per POST in the max step (default 1000)")
    g.add_argument("--latency-workers", type=int, default=4, help="client threads, one connection each (default 4)")
    g.add_argument("--latency-samples", type=int, default=200, help="sampled transactions per step, at most (default 200)")
    g.add_argument("--latency-poll-s", type=float, default=0.1,
                   help="seconds between polls of the lake listing and InfluxDB (default 0.1)")
    g.add_argument("--latency-startup-s", type=float, default=120.0, help="bound on carflow run/api start (default 120)")
    g.add_argument("--latency-drain-s", type=float, default=120.0,
                   help="bound on carflow catching up after a step (default 120)")
    g = p.add_argument_group("stage files")
    g.add_argument("--files-lake", help="look at this lake (hdfs://127.0.0.1:9000/…) instead of this run's")
    g.add_argument("--files-query", default="SELECT brand, count(*) AS n, sum(price) AS revenue FROM cars GROUP BY brand",
                   help="the query timed (default: count and revenue per brand over cars)")
    g.add_argument("--files-query-runs", type=int, default=3, help="times the query is run (default 3)")
    g.add_argument("--files-max", type=int, default=200_000, help="bound on the files listed (default 200000)")
    g = p.add_argument_group("stage soak")
    g.add_argument("--soak-rate", type=float, default=1000.0, help="tx/s of the live stream (default 1000)")
    g.add_argument("--soak-duration", default="10m", help="how long it streams (default 10m)")
    p.add_argument("--results-dir", help="default benches/results/<date>")
    p.add_argument("--work-dir", help="logs and scratch (default /tmp/carflow-bench-<run id>)")
    p.add_argument("--keep", action="store_true", help="keep the HDFS lakes, InfluxDB databases and logs")
    a = p.parse_args(argv)
    a.timeout = a.timeout or 300 + a.records * 0.003
    if a.spark_shuffle_partitions is None:
        a.spark_shuffle_partitions = a.spark_cores
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    bad = set(stages) - set(STAGES)
    if bad:
        p.error(f"unknown stage(s) {', '.join(sorted(bad))}; choose from {', '.join(STAGES)}")

    signal.signal(signal.SIGTERM, _on_signal)
    started = time.time()
    b = None
    try:
        b = Bench(a)
        b.load_at_start = os.getloadavg()
        if a.spark_max_offsets is None:
            a.spark_max_offsets = b.batch_max_rows
        b.preflight()
        if os.getloadavg()[0] > 1.0:
            log(f"note: load average {os.getloadavg()[0]:.1f} before the run: other work on this machine "
                "skews every figure")
        if set(stages) <= {"latency", "files", "soak"}:
            b.partitions = a.partitions  # none reads the bench topic (latency and soak make their own)
            b.topic_used = False
        else:
            b.ensure_topic()
        for s in stages:
            b.stage_load = os.getloadavg()
            log(f"stage {s} (load average {b.stage_load[0]:.1f}) ...")
            t0 = time.time()
            if s == "kafka":
                b.results[s] = b.stage_kafka()
            elif s == "carflow":
                b.results[s] = b.stage_carflow()
            elif s == "spark-stateful":
                b.results[s] = b.stage_spark("stateful")
            elif s == "spark-recompute":
                b.results[s] = b.stage_spark("recompute")
            elif s == "demo":
                b.results[s] = b.stage_demo()
            elif s == "core-ceiling":
                # The figure is a ratio's denominator, not a stage the others need: a failure
                # (e.g. the bench build) is a failed check and the later stages still run.
                try:
                    r = b.stage_core_ceiling()
                except (BenchError, subprocess.TimeoutExpired) as e:
                    log(f"FAILED: {e}")
                    b.checks.append({"check": "core ceiling", "got": str(e)[:2000], "want": None, "ok": False})
                    r = None
                if r:
                    b.results[s] = r
            elif s == "latency":
                b.results[s] = b.stage_latency()
            elif s == "files":
                b.results[s] = b.stage_files()
            elif s == "soak":
                b.results[s] = b.stage_soak()
            r = b.results.get(s)
            if r and r.get("records_per_s"):
                log(f"  {r['system']}: {r['records_per_s']:,.0f} rec/s, CPU {r['cpu_s']:.1f}s, "
                    f"peak RSS {r['peak_rss_mb']:,.0f} MB ({time.time() - t0:.0f}s)")
    except BenchError as e:
        log(f"FAILED: {e}")
        if b is not None:
            b.checks.append({"check": "stage failed", "got": str(e)[:2000], "want": None, "ok": False})
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        Measured.stop_all()
        if b is not None:
            b.cleanup_outputs()
        return 130
    try:
        if b is None or not getattr(b, "partitions", None):
            return 1
        b.finalize()
        txt = report(b, started)
        stem = write_outputs(b, txt, started, argv)
        print(txt)
        print(f"\nresults: {stem}.{{json,csv,txt,png}}")
        return 1 if any(not c["ok"] for c in b.checks) else 0
    finally:
        Measured.stop_all()
        if b is not None:
            b.cleanup_outputs()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
