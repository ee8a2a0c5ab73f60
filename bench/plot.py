#!/usr/bin/env python3
"""Charts of one bench/run.sh run, for BENCHMARKS.md.

    python3 bench/plot.py bench/results.jsonl bench/figures

Reads the last run in the results file (from its last {"run": ...} line) and writes, named
after the run's shape:
  <shape>-throughput.png       prompt tokens/s of every runner on the same pairs
  <shape>-latency.png          the service's p50 and p95 latency against concurrent clients
  <shape>-prefix-sharing.png   engine tokens/s with prefix sharing off and on, per workload
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend is chosen first)


def last_run(path):
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if "run" in line]
    if not starts:
        raise SystemExit(f"{path}: no run header line")
    return lines[starts[-1]], lines[starts[-1] + 1:]


def subtitle(header):
    return f"{header['shape']}, f32 unless marked, {header['cpu']} ({header['cores']} cores), {header['run']}"


def throughput(header, rows, out):
    bars = []
    for row in rows:
        runner = row.get("runner")
        if runner == "engine" and row.get("workload") == "short-query" and row["prefix_sharing"]:
            dtype = row.get("dtype", "f32")
            bars.append(("engine" if dtype == "f32" else f"engine\n{dtype}", row["tokens_per_s"]))
        elif runner == "reference":
            dtype = "" if row.get("dtype", "float32") == "float32" else " bf16"
            bars.append((f"reference{dtype}\nbatch {row['batch_size']}", row["tokens_per_s"]))
        elif runner == "reference-predict":
            dtype = "" if row.get("dtype", "float32") == "float32" else " bf16"
            bars.append((f"reference{dtype}\nas predict", row["tokens_per_s"]))
        elif runner == "service":
            bars.append((f"service\n{row['concurrency']} clients", row["tokens_per_s"]))
    figure, axes = plt.subplots(figsize=(9, 4.5))
    colors = ["#2b6cb0" if not label.startswith("reference") else "#a0aec0" for label, _ in bars]
    drawn = axes.bar([label for label, _ in bars], [value for _, value in bars], color=colors)
    axes.bar_label(drawn, fmt="%.0f")
    axes.set_ylabel("prompt tokens / s")
    axes.set_title(f"Throughput on the same pairs\n{subtitle(header)}", fontsize=10)
    figure.tight_layout()
    figure.savefig(out)


def latency(header, rows, out):
    service = sorted((r for r in rows if r.get("runner") == "service"), key=lambda r: r["concurrency"])
    clients = [r["concurrency"] for r in service]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(clients, [r["p50_s"] for r in service], marker="o", label="p50")
    axes.plot(clients, [r["p95_s"] for r in service], marker="o", label="p95")
    axes.set_xscale("log", base=2)
    axes.set_xticks(clients, [str(c) for c in clients])
    axes.set_xlabel("concurrent clients")
    axes.set_ylabel(f"seconds per request of {header['docs']} documents")
    axes.set_title(f"Service latency\n{subtitle(header)}", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)


def prefix_sharing(header, rows, out):
    engine = [r for r in rows if r.get("runner") == "engine" and r.get("dtype", "f32") == "f32"]
    workloads = list(dict.fromkeys(r["workload"] for r in engine))
    rate = {(r["workload"], r["prefix_sharing"]): r["tokens_per_s"] for r in engine}
    figure, axes = plt.subplots(figsize=(7, 4.5))
    width = 0.38
    for offset, sharing in ((-width / 2, False), (width / 2, True)):
        values = [rate.get((w, sharing), 0) for w in workloads]
        drawn = axes.bar([i + offset for i in range(len(workloads))], values, width,
                         label="sharing on" if sharing else "sharing off")
        axes.bar_label(drawn, fmt="%.0f")
    for i, w in enumerate(workloads):
        if rate.get((w, False)):
            gain = rate[(w, True)] / rate[(w, False)]
            axes.annotate(f"{gain:.2f}x", (i, max(rate[(w, True)], rate[(w, False)]) * 1.08), ha="center")
    axes.set_xticks(range(len(workloads)), workloads)
    axes.set_ylim(top=max(rate.values()) * 1.25)
    axes.set_ylabel("prompt tokens / s (engine)")
    axes.set_title(f"Query-prefix sharing\n{subtitle(header)}", fontsize=10)
    axes.legend()
    figure.tight_layout()
    figure.savefig(out)


def main():
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    header, rows = last_run(sys.argv[1])
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    shape = header["shape"]
    throughput(header, rows, out / f"{shape}-throughput.png")
    latency(header, rows, out / f"{shape}-latency.png")
    prefix_sharing(header, rows, out / f"{shape}-prefix-sharing.png")
    print(f"charts of the {header['run']} run in {out}/{shape}-*.png")


if __name__ == "__main__":
    main()
