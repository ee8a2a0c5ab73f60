#!/usr/bin/env python3
"""How far one dtype's raw scores lie from another's on the same pairs, as one JSON line.

    python3 bench/fidelity.py f32-scores.txt bf16-scores.txt [--label bf16-vs-f32]

Each file holds one raw score per line, in the order of the pairs (`cargo bench --bench engine
-- --scores FILE`). Prints max |Δ raw|, Spearman's rank correlation of the two lists, and the
spread of the first (random weights put the scores close together, so a small |Δ| says little
without it).
"""
import argparse
import json
import statistics


def ranks(values):
    """Ranks from 1, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return result


def read(path):
    with open(path) as f:
        return [float(line) for line in f if line.strip()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline")
    parser.add_argument("other")
    parser.add_argument("--label", default="fidelity")
    args = parser.parse_args()
    base, other = read(args.baseline), read(args.other)
    if len(base) != len(other) or len(base) < 2:
        raise SystemExit(f"{len(base)} and {len(other)} scores: need two equal lists of 2 or more")
    print(json.dumps({
        "runner": "fidelity",
        "label": args.label,
        "pairs": len(base),
        "max_abs_diff_raw": round(max(abs(a - b) for a, b in zip(base, other)), 5),
        "spearman": round(statistics.correlation(ranks(base), ranks(other)), 4),
        "baseline_min": round(min(base), 4),
        "baseline_max": round(max(base), 4),
        "baseline_sd": round(statistics.stdev(base), 4),
    }))


if __name__ == "__main__":
    main()
