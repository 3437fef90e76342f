#!/usr/bin/env python3
"""Check the Grafana files in deploy/grafana/ against a real InfluxDB, the way Grafana would run them.

1. Structure: provisioning YAML (data source uid, file provider), every dashboard JSON (unique uids,
   panel ids, gridPos inside the 24-column grid and not overlapping, every panel, target and template
   variable on a provisioned data source uid, every target a non-empty raw InfluxQL query), every
   measurement and field a panel reads produced by a file in queries/ (or by the engine itself), and
   every panel listed in README.md.
2. Queries: resolves each template variable by running its query, interpolates every target the way
   Grafana (10/11, InfluxQL) does, runs it on /query?db=..&epoch=ms and fails when InfluxDB returns an
   error or no value at all. Each dashboard runs twice: variables on "All", then on their first two values.

Standard library only. Exit status 0 when everything passes, 1 when a check fails, 2 on bad usage.

  check_queries.py --db carflow --from-ms 1767225600000 --to-ms 1767236400000
  check_queries.py --synthetic --db grafana_scratch      # writes synthetic points, checks, drops the db
  check_queries.py --structure-only                       # no InfluxDB needed
"""

import argparse
import json
import pathlib
import random
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent

# Written by the engine itself (not by a queries/*.sql file): measurement -> tags and fields.
ENGINE_MEASUREMENTS = {
    "carflow_engine": {"engine", "records_in", "rows_out", "dead_letters", "late_rows", "points", "batch_ms", "lag"},
}
PANEL_TYPES = {"timeseries", "stat", "barchart", "table", "piechart", "bargauge", "gauge", "text", "row"}
GRID_COLUMNS = 24

# ---------------------------------------------------------------------------------------------------
# Grafana's formatting, as in grafana/grafana (public/app/plugins/datasource/influxdb/datasource.ts,
# packages/grafana-data/src/text/string.ts, datetime/rangeutil.ts, pkg/tsdb/influxdb/influxql/models/
# query.go and the plugin SDK's gtime.FormatInterval).
# ---------------------------------------------------------------------------------------------------

# templateSrv's variable syntax: $var, [[var]] / [[var:fmt]], ${var} / ${var.field} / ${var:fmt}
VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# interpolateQueryExpr returns a single string value unescaped when JavaScript's parseFloat accepts it
JS_PARSEFLOAT_RE = re.compile(r"^\s*[+-]?(Infinity|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)")


def escape_regex(value):
    """@grafana/data escapeRegex: backslash before \\ ^ $ * + ? . ( ) | [ ] { } /"""
    return re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), value)


def format_variable(variable, selected, query):
    """The value Grafana puts in place of $name in an InfluxQL raw query.

    `selected` is the variable's current value: "$__all", a string, or a list of strings.
    """
    if selected == "$__all" or (isinstance(selected, list) and selected[:1] == ["$__all"]):
        if variable.get("allValue"):
            return variable["allValue"]  # a custom all value is inserted verbatim, never escaped
        selected = list(variable["_values"])  # otherwise "All" means the list of every value
    if isinstance(selected, str) and JS_PARSEFLOAT_RE.match(selected):
        return selected
    if variable.get("multi"):
        if isinstance(selected, str):
            return escape_regex(selected)
        return "(" + "|".join(escape_regex(v) for v in selected) + ")"  # parentheses even for one value
    # single-value variable: escaped only when it sits inside a /regex/ of the query
    in_regex = re.search(r"/[^/]*\$\{?" + re.escape(variable["name"]) + r"\b[^/]*/", query or "")
    if not in_regex:
        return selected if isinstance(selected, str) else ",".join(selected)
    if isinstance(selected, str):
        return escape_regex(selected)
    return "(" + "|".join(escape_regex(v) for v in selected) + ")"


def interpolate_variables(query, variables, selection):
    """Frontend step: dashboard template variables (templateSrv.replace with interpolateQueryExpr)."""

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in variables:
            return m.group(0)  # $timeFilter, $__interval... are left for the backend
        if fmt or m.group(5):
            raise ValueError(f"variable format/field syntax not emulated: {m.group(0)}")
        return format_variable(variables[name], selection[name], query)

    return VARIABLE_RE.sub(repl, query)


def round_interval(ms):
    """rangeutil.roundInterval"""
    steps = [
        (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
        (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
        (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
        (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
        (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (604800000, 86400000),
        (1814400000, 604800000), (3628800000, 2592000000),
    ]
    for limit, value in steps:
        if ms < limit:
            return value
    return 31536000000


def interval_to_ms(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|[smhdwMy])", text.strip())
    if not m:
        raise ValueError(f"bad interval {text!r}")
    unit_s = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
    return int(float(m.group(1)) * unit_s[m.group(2)] * 1000)


def format_interval(ms):
    """gtime.FormatInterval: the largest whole unit only (90000 ms -> "1m")."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def panel_interval_ms(panel, datasource, from_ms, to_ms, max_data_points):
    low = panel.get("interval") or datasource.get("timeInterval") or ""
    low_ms = interval_to_ms(low) if low else 1
    points = panel.get("maxDataPoints") or max_data_points
    return max(low_ms, round_interval((to_ms - from_ms) / points))


def interpolate_backend(query, from_ms, to_ms, interval_ms):
    """Backend step, in the order of query.go Build(): $timeFilter, $interval, $__interval_ms, $__interval."""
    text = format_interval(interval_ms)
    query = query.replace("$timeFilter", f"time >= {from_ms}ms and time <= {to_ms}ms")
    query = query.replace("$interval", text)
    query = query.replace("$__interval_ms", str(interval_ms))
    return query.replace("$__interval", text)


# ---------------------------------------------------------------------------------------------------
# InfluxDB
# ---------------------------------------------------------------------------------------------------


class Influx:
    def __init__(self, url, db):
        self.url = url.rstrip("/")
        self.db = db

    def _request(self, path, params, data=None, method="GET"):
        req = urllib.request.Request(f"{self.url}{path}?{urllib.parse.urlencode(params)}", data=data, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def query(self, q, db=True):
        params = {"q": q, "epoch": "ms"}
        if db:
            params["db"] = self.db
        status, body = self._request("/query", params)
        try:
            doc = json.loads(body)
        except ValueError:
            return None, f"HTTP {status}: {body[:200]}"
        if status != 200 or doc.get("error"):
            return None, f"HTTP {status}: {doc.get('error', body[:200])}"
        result = doc["results"][0]
        if result.get("error"):
            return None, result["error"]
        return result.get("series", []), None

    def admin(self, q):
        status, body = self._request("/query", {"q": q}, data=b"", method="POST")
        if status != 200 or '"error"' in body:
            raise RuntimeError(f"{q}: HTTP {status} {body[:200]}")

    def write(self, lines):
        data = "\n".join(lines).encode()
        status, body = self._request("/api/v2/write", {"bucket": self.db, "precision": "ms"}, data, "POST")
        if status != 204:
            raise RuntimeError(f"write: HTTP {status} {body[:200]}")


# ---------------------------------------------------------------------------------------------------
# Structure
# ---------------------------------------------------------------------------------------------------


def yaml_values(path, key):
    """Values of `key:` on uncommented lines (the provisioning files are flat enough for this)."""
    out = []
    for line in path.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        m = re.match(rf"^\s*(?:-\s+)?{key}:\s*(.+?)\s*$", line)
        if m:
            out.append(m.group(1).strip("'\""))
    return out


def load_datasources(prov, errors):
    sources = {}
    for path in sorted((prov / "datasources").glob("*.y*ml")):
        if yaml_values(path, "apiVersion") != ["1"]:
            errors.append(f"{path.name}: apiVersion: 1 missing")
        uids, types = yaml_values(path, "uid"), yaml_values(path, "type")
        if len(uids) != len(types):
            errors.append(f"{path.name}: every data source needs a uid and a type")
        for uid, typ in zip(uids, types):
            if uid in sources:
                errors.append(f"{path.name}: data source uid {uid} twice")
            interval = yaml_values(path, "timeInterval")
            sources[uid] = {"type": typ, "timeInterval": interval[0] if interval else ""}
    if not sources:
        errors.append("no data source in provisioning/datasources")
    for path in sorted((prov / "dashboards").glob("*.y*ml")):
        if "file" not in yaml_values(path, "type") or not yaml_values(path, "path"):
            errors.append(f"{path.name}: a provider needs type: file and options.path")
    return sources


def rects_overlap(a, b):
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def check_ref(where, ref, sources, errors):
    if not isinstance(ref, dict) or ref.get("uid") not in sources:
        errors.append(f"{where}: datasource {ref!r} is not a provisioned uid ({', '.join(sources)})")
    elif ref.get("type") != sources[ref["uid"]]["type"]:
        errors.append(f"{where}: datasource type {ref.get('type')} != {sources[ref['uid']]['type']}")


def check_dashboard(name, dash, sources, errors):
    for key in ("uid", "title", "schemaVersion", "time", "panels"):
        if not dash.get(key):
            errors.append(f"{name}: {key} missing")
    panels = [p for p in dash.get("panels", []) if p.get("type") != "row"]
    ids = [p.get("id") for p in dash.get("panels", [])]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append(f"{name}: panel ids missing or not unique")
    titles = [p.get("title") for p in panels]
    if len(titles) != len(set(titles)):
        errors.append(f"{name}: panel titles not unique")
    grids = []
    for p in dash.get("panels", []):
        where = f"{name} / {p.get('title')}"
        if p.get("type") not in PANEL_TYPES:
            errors.append(f"{where}: unknown panel type {p.get('type')}")
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "hwxy"):
            errors.append(f"{where}: gridPos needs integer h, w, x, y")
            continue
        if g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > GRID_COLUMNS:
            errors.append(f"{where}: gridPos {g} outside the {GRID_COLUMNS}-column grid")
        for other_title, other in grids:
            if rects_overlap(g, other):
                errors.append(f"{where}: gridPos overlaps {other_title}")
        grids.append((p.get("title"), g))
    for p in panels:
        where = f"{name} / {p.get('title')}"
        check_ref(where, p.get("datasource"), sources, errors)
        targets = p.get("targets") or []
        if not targets:
            errors.append(f"{where}: no targets")
        refs = [t.get("refId") for t in targets]
        if len(refs) != len(set(refs)) or None in refs:
            errors.append(f"{where}: refIds missing or not unique")
        for t in targets:
            check_ref(f"{where} / {t.get('refId')}", t.get("datasource"), sources, errors)
            if t.get("rawQuery") is not True or not str(t.get("query", "")).strip():
                errors.append(f"{where} / {t.get('refId')}: needs rawQuery: true and a non-empty query")
            if t.get("resultFormat", "time_series") not in ("time_series", "table"):
                errors.append(f"{where} / {t.get('refId')}: resultFormat {t.get('resultFormat')}")
    for v in dash.get("templating", {}).get("list", []):
        where = f"{name} / variable {v.get('name')}"
        if v.get("type") != "query":
            continue
        check_ref(where, v.get("datasource"), sources, errors)
        if not variable_query(v).strip():
            errors.append(f"{where}: empty query")


def variable_query(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")


def query_parts(query):
    """Measurements and the identifiers (tags, fields) a raw query reads."""
    measurements = set(re.findall(r'\bFROM\s+"([^"]+)"', query, re.I))
    aliases = set(re.findall(r'\bAS\s+"([^"]+)"', query, re.I))
    names = set(re.findall(r'"([^"]+)"', query)) - measurements
    used = set(re.findall(r'\w+\(\s*"([^"]+)"', query)) | set(re.findall(r'"([^"]+)"\s*[=!]~', query))
    used |= {n for n in names if re.search(rf'GROUP BY[^;]*"{re.escape(n)}"', query, re.I)}
    return measurements, (names - aliases) | used


QUERIES = REPO / "queries"


def sql_producers():
    """measurement -> text of the queries/*.sql file that writes it (INSERT INTO influx.<name>)."""
    out = {}
    for path in sorted(QUERIES.glob("*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text())  # comments do not produce columns
        for m in re.finditer(r"INSERT\s+INTO\s+influx\.(\w+)", text, re.I):
            out[m.group(1)] = (path.name, text)
    return out


def check_sources(name, dash, errors):
    """Every measurement a panel reads is written by queries/*.sql (or the engine); every field is in it."""
    producers = sql_producers()
    if not producers:
        return
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            measurements, idents = query_parts(t.get("query", ""))
            for m in measurements:
                if m in ENGINE_MEASUREMENTS:
                    missing = idents - ENGINE_MEASUREMENTS[m]
                elif m in producers:
                    sql = producers[m][1]
                    missing = {i for i in idents if not re.search(rf"\b{re.escape(i)}\b", sql)}
                else:
                    errors.append(f"{name} / {p.get('title')}: measurement {m} is written by no queries/*.sql")
                    continue
                if missing:
                    errors.append(f"{name} / {p.get('title')}: {m} has no {', '.join(sorted(missing))}")


def check_readme(dashboards, errors):
    """README.md's "## Panels" table lists exactly the panels of the dashboards (| dashboard | panel | ...)."""
    readme = HERE / "README.md"
    if not readme.exists():
        errors.append("README.md missing")
        return
    listed = set()
    titles = {d["title"] for d in dashboards.values()}
    section = ""
    for line in readme.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        cells = [c.strip().strip("`*") for c in line.strip().strip("|").split("|")]
        if section == "Panels" and line.lstrip().startswith("|") and len(cells) >= 3 and cells[0] in titles:
            listed.add((cells[0], cells[1]))
    actual = {(d["title"], p["title"]) for d in dashboards.values() for p in d["panels"] if p.get("type") != "row"}
    for dash, panel in sorted(actual - listed):
        errors.append(f"README.md: panel table misses {dash} / {panel}")
    for dash, panel in sorted(listed - actual):
        errors.append(f"README.md: panel table lists {dash} / {panel}, which no dashboard has")


# ---------------------------------------------------------------------------------------------------
# Running the queries
# ---------------------------------------------------------------------------------------------------


def resolve_variables(influx, dash, errors):
    variables = {}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        series, err = influx.query(variable_query(v))
        values = sorted({str(row[-1]) for s in series or [] for row in s.get("values", [])})
        if err or not values:
            errors.append(f"{dash['title']} / variable {v['name']}: {err or 'no values'}")
        variables[v["name"]] = dict(v, _values=values)
    return variables


def run_dashboard(influx, name, dash, sources, args, selection_name, selection, variables, report, errors):
    for p in dash["panels"]:
        if p.get("type") == "row":
            continue
        ds = sources.get(p["datasource"]["uid"], {})
        interval_ms = args.interval_ms or panel_interval_ms(p, ds, args.from_ms, args.to_ms, args.max_data_points)
        for t in p["targets"]:
            query = interpolate_variables(t["query"], variables, selection)
            query = interpolate_backend(query, args.from_ms, args.to_ms, interval_ms)
            measurements, idents = query_parts(t["query"])
            entry = {
                "dashboard": dash["title"], "file": name, "panel": p["title"], "type": p["type"],
                "refId": t["refId"], "variables": selection_name, "measurements": sorted(measurements),
                "identifiers": sorted(idents), "query": query, "series": 0, "rows": 0, "values": 0, "error": None,
            }
            leftover = re.findall(r"(?<!\\)\$\{?[A-Za-z_]\w*", query)  # a regex's closing $/ does not match
            series, err = (None, f"uninterpolated {leftover}") if leftover else influx.query(query)
            if series is not None:
                entry["series"] = len(series)
                entry["rows"] = sum(len(s.get("values", [])) for s in series)
                entry["values"] = sum(v is not None for s in series for row in s.get("values", []) for v in row[1:])
                if not entry["values"]:
                    err = "no values"
            entry["error"] = err
            report.append(entry)
            if err:
                errors.append(f"{dash['title']} / {p['title']} / {t['refId']} ({selection_name}): {err}\n    {query}")


def print_report(report):
    width = max(len(f"{e['dashboard']} / {e['panel']} / {e['refId']}") for e in report)
    for e in report:
        label = f"{e['dashboard']} / {e['panel']} / {e['refId']}"
        status = "FAIL " + e["error"] if e["error"] else "ok"
        print(f"  {label:<{width}}  [{e['variables']:<4}] {e['series']:>3} series {e['rows']:>5} rows "
              f"{e['values']:>5} values  {','.join(e['measurements'])}  {status}")


# ---------------------------------------------------------------------------------------------------
# Synthetic data (--synthetic): a few hundred points per measurement, shaped like the real ones
# ---------------------------------------------------------------------------------------------------

BRANDS = {"Toyota": ["RAV4", "Camry"], "Ford": ["F-150"], "Mercedes-Benz": ["C-Class"], "Volkswagen": ["ID.4", "Golf GTI"]}
STATES = ["TX", "CA", "NY", "DC"]
PAYMENTS = ["cash", "loan", "lease"]
CONDITIONS = ["new", "used", "certified"]


def tag(v):
    return re.sub(r"([ ,=])", r"\\\1", v)


def synthetic_lines(from_ms, to_ms, rng):
    lines = {}
    minute, five = 60000, 300000

    def add(measurement, tags, fields, ts):
        t = ",".join(f"{k}={tag(v)}" for k, v in tags)
        f = ",".join(f"{k}={v}i" if isinstance(v, int) else f"{k}={v:.2f}" for k, v in fields)
        lines.setdefault(measurement, []).append(f"{measurement},{t} {f} {ts}")

    start = from_ms - from_ms % minute
    for ts in range(start, to_ms, minute):
        for brand, models in BRANDS.items():
            n = rng.randint(0, 4)
            if n:
                prices = [rng.uniform(20000, 60000) for _ in range(n)]
                add("sales_by_brand", [("brand", brand)],
                    [("sales", n), ("avg_price", sum(prices) / n), ("revenue", sum(prices))], ts)
            for model in models:
                n = rng.randint(0, 2)
                if n:
                    add("sales_by_model", [("brand", brand), ("model", model)],
                        [("sales", n), ("revenue", n * rng.uniform(20000, 60000))], ts)
        for state in STATES:
            n = rng.randint(0, 3)
            if n:
                add("sales_by_state", [("state", state)], [("sales", n), ("revenue", n * rng.uniform(20000, 60000))], ts)
        for pay in PAYMENTS:
            for cond in CONDITIONS:
                n = rng.randint(0, 2)
                if n:
                    add("sales_by_payment", [("condition", cond), ("payment_method", pay)],
                        [("sales", n), ("revenue", n * rng.uniform(20000, 60000))], ts)
        for region, segment in (("Northeast", "flagship"), ("South", "volume"), ("West", "neighborhood")):
            n = rng.randint(0, 3)
            if n:
                add("sales_by_region", [("region", region), ("segment", segment)],
                    [("sales", n), ("revenue", n * rng.uniform(20000, 60000)), ("new_sales", n),
                     ("new_discount", rng.uniform(0.0, 0.12))], ts)
    for ts in range(from_ms - from_ms % five, to_ms, five):
        for cond in CONDITIONS:
            q = sorted(rng.uniform(15000, 90000) for _ in range(6))
            add("price_percentiles", [("condition", cond)],
                [("sales", rng.randint(5, 40)), ("min_price", q[0]), ("p25", q[1]), ("p50", q[2]), ("p75", q[3]),
                 ("p90", q[4]), ("max_price", q[5])], ts)
    for ts in range(from_ms, to_ms, 20000):
        for engine in ("carflow-1", "carflow-2"):
            n = rng.randint(50, 500)
            add("carflow_engine", [("engine", engine)],
                [("records_in", n), ("rows_out", n), ("dead_letters", int(rng.random() < 0.05)),
                 ("late_rows", int(rng.random() < 0.1)), ("points", n // 3), ("batch_ms", rng.uniform(5, 250)),
                 ("lag", rng.randint(0, 2000))], ts + rng.randint(0, 999))
    return lines


# ---------------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8086")
    ap.add_argument("--db", default="carflow")
    ap.add_argument("--from-ms", type=int, help="range start, Unix ms (default: now - 6h; --synthetic: 2026-01-01)")
    ap.add_argument("--to-ms", type=int, help="range end, Unix ms (default: now; --synthetic: start + 6h)")
    ap.add_argument("--max-data-points", type=int, default=1000, help="Grafana's panel width in points (default 1000)")
    ap.add_argument("--interval-ms", type=int, help="force $__interval_ms instead of computing it like Grafana")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=V1,V2",
                    help="select these values instead of the default runs (All, then the first two values)")
    ap.add_argument("--dashboards", type=pathlib.Path, default=HERE / "dashboards")
    ap.add_argument("--provisioning", type=pathlib.Path, default=HERE / "provisioning")
    ap.add_argument("--synthetic", action="store_true",
                    help="create --db, write synthetic points over the range, check, then drop --db")
    ap.add_argument("--keep", action="store_true", help="with --synthetic: do not drop the database")
    ap.add_argument("--structure-only", action="store_true", help="only the structural checks, no InfluxDB")
    ap.add_argument("--only", action="append", default=[], metavar="UID",
                    help="run the queries of these dashboards only (structure is always checked for all); "
                         "e.g. the engine dashboard reads processing time, the sales dashboards event time")
    ap.add_argument("--queries", type=pathlib.Path, default=REPO / "queries",
                    help="the SQL transforms whose measurements and fields the panels must read (default: queries/)")
    ap.add_argument("--json", type=pathlib.Path, help="also write the per-target report as JSON to this file")
    args = ap.parse_args()
    global QUERIES
    QUERIES = args.queries

    if args.synthetic:
        if args.db == "carflow":
            ap.error("--synthetic writes into --db and drops it: give a scratch database, e.g. --db grafana_scratch")
        args.from_ms = args.from_ms or 1767225600000  # 2026-01-01T00:00:00Z, where the demo generator starts
        args.to_ms = args.to_ms or args.from_ms + 6 * 3600000
    now = int(time.time() * 1000)
    args.to_ms = args.to_ms or now
    args.from_ms = args.from_ms or args.to_ms - 6 * 3600000
    if args.from_ms >= args.to_ms:
        ap.error("--from-ms must be before --to-ms")
    forced = {}
    for item in args.var:
        name, _, values = item.partition("=")
        forced[name] = "$__all" if values in ("", "$__all", "All") else values.split(",")

    errors = []
    sources = load_datasources(args.provisioning, errors)
    dashboards = {}
    for path in sorted(args.dashboards.glob("*.json")):
        try:
            dashboards[path.name] = json.loads(path.read_text())
        except ValueError as e:
            errors.append(f"{path.name}: {e}")
    uids = [d.get("uid") for d in dashboards.values()]
    if len(uids) != len(set(uids)):
        errors.append(f"dashboard uids not unique: {uids}")
    for name, dash in dashboards.items():
        check_dashboard(name, dash, sources, errors)
        check_sources(name, dash, errors)
    check_readme(dashboards, errors)
    print(f"structure: {len(dashboards)} dashboards, "
          f"{sum(len(d.get('panels', [])) for d in dashboards.values())} panels, data sources {', '.join(sources)}: "
          f"{'ok' if not errors else f'{len(errors)} problem(s)'}")
    if errors or args.structure_only:
        for e in errors:
            print("  FAIL", e)
        return 1 if errors else 0

    influx = Influx(args.url, args.db)
    report = []
    try:
        if args.synthetic:
            influx.admin(f'CREATE DATABASE "{args.db}"')
            for measurement, lines in synthetic_lines(args.from_ms, args.to_ms, random.Random(7)).items():
                for i in range(0, len(lines), 5000):
                    influx.write(lines[i:i + 5000])
                print(f"synthetic: {len(lines):>5} points in {measurement}")
        print(f"queries: {args.url} db={args.db} range {args.from_ms}..{args.to_ms} ms")
        for name, dash in dashboards.items():
            if args.only and dash.get("uid") not in args.only:
                continue
            variables = resolve_variables(influx, dash, errors)
            runs = [("all", {n: "$__all" for n in variables})]
            if all(len(v["_values"]) >= 2 for v in variables.values()):
                runs.append(("some", {n: v["_values"][:2] for n, v in variables.items()}))
            if forced:
                runs = [("set", {n: forced.get(n, "$__all") for n in variables})]
            for selection_name, selection in runs:
                run_dashboard(influx, name, dash, sources, args, selection_name, selection, variables, report, errors)
    except (OSError, RuntimeError) as e:
        print(f"InfluxDB at {args.url}: {e}", file=sys.stderr)
        return 2
    finally:
        if args.synthetic and not args.keep:
            try:
                influx.admin(f'DROP DATABASE "{args.db}"')
            except (OSError, RuntimeError) as e:
                print(f"could not drop {args.db}: {e}", file=sys.stderr)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    for e in errors:
        print("  FAIL", e)
    print(f"{len(report)} queries, {len(errors)} failure(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
