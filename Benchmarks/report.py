#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw measurements into a table with ratios, results.json,
BENCHMARKS.md and a PNG plot. Every figure comes from the same run."""
import csv, datetime, json, os, platform, subprocess, sys

raw, out = sys.argv[1], sys.argv[2]
quick = len(sys.argv) > 4 and sys.argv[4] == "1"

def js(name):
    with open(os.path.join(raw, name)) as f:
        return json.loads(f.read().strip().splitlines()[-1])

def redis(name):
    # redis-benchmark --csv: "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    with open(os.path.join(raw, name)) as f:
        row = next(csv.reader(f.read().strip().splitlines()[-1:]))
    return {"rps": float(row[1]), "p50_us": float(row[4]) * 1000, "p99_us": float(row[6]) * 1000}

rows, results = [], {}

def add(workload, metric, pmu, limit=None, limit_name="", redis_value=None, target=None, better="lower"):
    ratio_limit = (pmu / limit) if limit else None
    ratio_redis = (pmu / redis_value) if redis_value else None
    rows.append((workload, metric, pmu, limit, limit_name, ratio_limit, redis_value, ratio_redis, target))
    results[f"{workload} / {metric}"] = {"pmu": pmu, "limit": limit, "limit_name": limit_name,
        "pmu_over_limit": ratio_limit, "redis": redis_value, "pmu_over_redis": ratio_redis, "target": target, "better": better}

for size in (64, 4096):
    tcp, pmu, dur, ms = js(f"tcp-pingpong-{size}.json"), js(f"pmu-small-{size}.json"), js(f"pmu-durable-{size}.json"), js(f"msync-{size}.json")
    rs, ra = redis(f"redis-set-{size}.csv"), redis(f"redis-aof-{size}.csv")
    for p in ("p50_us", "p99_us", "p999_us"):
        add(f"write {size} B, acknowledged", p, pmu[p], tcp[p], "raw TCP round trip",
            rs.get(p), "<= 1.3x limit" if p == "p50_us" else None)
    for p in ("p50_us", "p99_us"):
        add(f"write {size} B, durable", p, dur[p], tcp[p] + ms[p], "TCP round trip + local msync",
            ra.get(p), "<= 1.2x limit" if (p == "p50_us" and size == 4096) else None)

stream, mbulk = js("tcp-stream.json"), js("msync-bulk.json")
redis_1m = redis("redis-set-1m.csv")["rps"] * (1 << 20) / 1e9
for chunk, label in ((1 << 20, "1 MiB"), (4 << 20, "4 MiB")):
    b = js(f"pmu-bulk-{chunk}.json")
    add(f"checkpoint {b['bytes'] >> 20} MiB in {label} chunks", "acknowledged GB/s", b["ack_gbps"], stream["gbps"], "raw TCP stream", redis_1m, ">= 0.85x limit, >= 1.5x Redis", "higher")
    add(f"checkpoint {b['bytes'] >> 20} MiB in {label} chunks", "durable GB/s", b["durable_gbps"], min(stream["gbps"], mbulk["durable_gbps"]), "min(TCP stream, local write+msync)", None, ">= 0.8x limit", "higher")
    add(f"recovery read, {label} chunks", "GB/s", b["read_gbps"], stream["gbps"], "raw TCP stream", None, None, "higher")
b = js("pmu-bulk-populate.json")
label = f"checkpoint {b['bytes'] >> 20} MiB in 4 MiB chunks, server --populate"
add(label, "acknowledged GB/s", b["ack_gbps"], stream["gbps"], "raw TCP stream", redis_1m, ">= 0.85x limit, >= 1.5x Redis", "higher")
add(label, "durable GB/s", b["durable_gbps"], min(stream["gbps"], mbulk["durable_gbps"]), "min(TCP stream, local write+msync)", None, ">= 0.8x limit", "higher")
for clients in (1, 4, 16, 64):
    c, ra = js(f"pmu-conc-{clients}.json"), redis(f"redis-aof-conc-{clients}.csv")
    add(f"durable 4 KiB writes, {clients} clients", "ops/s", c["ops_per_sec"], None, "", ra["rps"], ">= 1.5x Redis AOF-always" if clients == 16 else None, "higher")
    add(f"durable 4 KiB writes, {clients} clients", "p99_us", c["p99_us"], None, "", ra["p99_us"])
if os.path.exists(os.path.join(raw, "pair.json")):
    # Issue 12 (scripts/bench-pair.sh, same run): its own raw TCP, acknowledged-only and durable rows.
    with open(os.path.join(raw, "pair.json")) as f:
        pair = json.load(f)
    tcp4, durable4 = pair["raw TCP round trip"], pair["durable (write + msync)"]
    for name in ("acknowledged-only", "mirrored, partner page-cache", "mirrored, partner fdatasync"):
        for p in ("p50_us", "p99_us"):
            add(f"write 4 KiB, pair bench: {name}", p, pair[name][p], tcp4[p], "raw TCP round trip", None,
                "<= 2.2x limit" if (p == "p50_us" and name.startswith("mirrored")) else None)
        if name.startswith("mirrored"):
            add(f"write 4 KiB, pair bench: {name}", "p50_us vs durable", pair[name]["p50_us"], durable4["p50_us"], "durable write (write + msync)", None, "<= 0.6x limit")
    for p in ("p50_us", "p99_us"):
        add("write 4 KiB, pair bench: durable (write + msync)", p, durable4[p], tcp4[p], "raw TCP round trip")
    for clients in (1, 16, 64):
        m, ra = pair[f"mirrored {clients} clients"], pair[f"redis appendfsync always {clients} clients"]
        add(f"mirrored 4 KiB writes (partner fdatasync), {clients} clients", "ops/s", m["ops_per_sec"], None, "", ra["ops_per_sec"], ">= 1.5x Redis AOF-always" if clients == 16 else None, "higher")
        add(f"mirrored 4 KiB writes (partner fdatasync), {clients} clients", "p50_us", m["p50_us"], None, "", ra["p50_us"])
    t = pair["takeover"]
    add(f"takeover of a {t['log_bytes'] >> 20} MiB mirror log", "ms, kill -9 to first write served", t["first_write_ms"])
for k, m in ((4, 1), (4, 2), (8, 3)):
    e = js(f"erasure-{k}-{m}.json")
    add(f"erasure code k={k} m={m}, one core", "encode GB/s", e["encode_gbps"], e["memcpy_gbps"], "memcpy, same bytes", None, None, "higher")
    add(f"erasure code k={k} m={m}, one core", f"decode GB/s ({m} lost)", e["decode_gbps"], e["memcpy_gbps"], "memcpy, same bytes", None, None, "higher")
single = js("pmu-checkpoint-single.json")
for k, m in ((4, 1), (4, 2)):
    s_ = js(f"pmu-striped-{k}-{m}.json")
    label = f"checkpoint {s_['bytes'] >> 20} MiB striped k={k} m={m} on {s_['servers']} servers"
    add(label, "write GB/s (complete)", s_["write_gbps"], single["write_gbps"], "same checkpoint, one server", None, None, "higher")
    add(label, "read GB/s", s_["read_gbps"], single["read_gbps"], "same checkpoint, one server", None, None, "higher")
    add(label, "degraded read GB/s (1 server out)", s_["degraded_read_gbps"], single["read_gbps"], "same checkpoint, one server", None, None, "higher")
    add(label, "bytes on the wire per payload byte", s_["wire_amplification"], None, "", None, "(k+m)/k")
for mib in ((64, 256) if quick else (64, 1024)):
    sn, rf = js(f"pmu-snapshot-{mib}.json"), js(f"redis-fork-{mib}.json")
    fork = sorted(rf["fork_usec"])[len(rf["fork_usec"]) // 2]
    label = f"live snapshot, {mib} MiB arena ({sn['mode']})"
    add(label, "pause us, first (full)", sn["full_pause_us"], None, "", fork, "<= 1x Redis fork")
    add(label, "pause us, incremental 1% dirty", sn["incr1_pause_us"], None, "", fork, "<= 0.2x Redis fork")
    add(label, "pause us, incremental 10% dirty", sn["incr10_pause_us"], None, "", fork, "<= 0.2x Redis fork")
    for p in (1, 10):
        add(label, f"bytes sent, {p}% dirty", sn[f"incr{p}_bytes_sent"], sn[f"incr{p}_dirty_bytes"], "dirty bytes", None, None)
    add(label, "full transfer GB/s (durable)", sn["full_gbps"], stream["gbps"], "raw TCP stream", None, None, "higher")
    for kind, name in (("hot1", "hot set 1% of pages"), ("uniform", "uniform over the arena")):
        add(label, f"writer writes/s during transfer, {name}", sn[f"writer_rate_during_transfer_{kind}"],
            sn[f"writer_rate_idle_{kind}"], "same writer, no transfer", None, ">= 0.8x limit" if kind == "hot1" else None, "higher")
reg, rss = js("pmu-regions.json"), js("pmu-rss.json")
add(f"{reg['count']} regions", "create us/op", reg["create_us"])
add(f"{reg['count']} regions", "open+close us/op", reg["open_close_us"])
add(f"{reg['count']} regions", "stat us/op", reg["stat_us"])
per_region = (rss["rss_after_kib"] - rss["rss_before_kib"]) * 1024 / max(1, reg["count"])
add(f"{reg['count']} regions", "server RSS bytes/region", per_region)

def fmt(v):
    if v is None: return "-"
    return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.0f}"

header = ("workload", "metric", "PMU", "limit", "PMU/limit", "Redis", "PMU/Redis", "target")
table = [header] + [(w, m, fmt(p), fmt(l), (f"{rl:.2f}x" if rl else "-"), fmt(r), (f"{rr:.2f}x" if rr else "-"), t or "") for (w, m, p, l, ln, rl, r, rr, t) in rows]
widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
text = "\n".join("  ".join(str(c).ljust(widths[i]) for i, c in enumerate(r)) for r in table)
print(text)

machine = f"{platform.node()}: {os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}"
try:
    machine += ", " + subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
except Exception:
    pass
stamp = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M UTC")
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"date": stamp, "machine": machine, "quick": quick, "results": results}, f, indent=2)

md = [f"# PMU benchmarks", "", f"Run {stamp} on {machine}; command `scripts/bench.sh{' --quick' if quick else ''}`.",
      "Every figure in a row was measured in the same run; latencies in microseconds. Limit = the machine's raw TCP",
      "and local msync figures for the same sizes; Redis = Debian's redis-server on 127.0.0.1 (SET; AOF-always for durable rows).", "",
      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
md += ["| " + " | ".join(str(c) for c in r) + " |" for r in table[1:]]
md += ["", "![latency and throughput](benchmarks.png)", ""]
with open(os.path.join(out, "BENCHMARKS.md"), "w") as f:
    f.write("\n".join(md))

try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    lat = [r for r in rows if r[1] in ("p50_us", "p99_us") and r[0].startswith("write")]
    labels = [f"{r[0].replace('write ', '')}\n{r[1]}" for r in lat]
    x = range(len(lat))
    axes[0].bar([i - 0.27 for i in x], [r[2] for r in lat], 0.27, label="PMU")
    axes[0].bar(list(x), [r[3] or 0 for r in lat], 0.27, label="limit")
    axes[0].bar([i + 0.27 for i in x], [r[6] or 0 for r in lat], 0.27, label="Redis")
    axes[0].set_xticks(list(x)); axes[0].set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    axes[0].set_yscale("log"); axes[0].set_ylabel("microseconds"); axes[0].set_title("small writes"); axes[0].legend()
    thr = [r for r in rows if r[1].endswith("GB/s") and not r[0].startswith("erasure")]
    x = range(len(thr))
    axes[1].bar([i - 0.27 for i in x], [r[2] for r in thr], 0.27, label="PMU")
    axes[1].bar(list(x), [r[3] or 0 for r in thr], 0.27, label="limit")
    axes[1].bar([i + 0.27 for i in x], [r[6] or 0 for r in thr], 0.27, label="Redis")
    axes[1].set_xticks(list(x)); axes[1].set_xticklabels([f"{r[0]}\n{r[1]}" for r in thr], fontsize=7, rotation=30, ha="right")
    axes[1].set_ylabel("GB/s"); axes[1].set_title("bulk"); axes[1].legend()
    conc = [r for r in rows if r[1] == "ops/s"]
    axes[2].plot([1, 4, 16, 64], [r[2] for r in conc], "o-", label="PMU durable 4 KiB")
    axes[2].plot([1, 4, 16, 64], [r[6] for r in conc], "s-", label="Redis AOF always")
    axes[2].set_xscale("log", base=2); axes[2].set_xlabel("clients"); axes[2].set_ylabel("ops/s"); axes[2].set_title("concurrency"); axes[2].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "benchmarks.png"), dpi=110)
except Exception as error:  # the table and JSON matter more than the picture
    print(f"(plot not written: {error})", file=sys.stderr)
