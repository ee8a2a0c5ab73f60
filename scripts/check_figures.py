#!/usr/bin/env python3
"""One source for every figure: BENCHMARKS.md's "Current figures" tables.

- README.md and docs/*.md quote a figure as `<!-- fig:KEY -->VALUE`: KEY must be a row of
  those tables and the text after the marker must be that row's value, as written there.
- README.md states no other measured figure: a speed (tokens/s, pairs/s), a ratio (`1.4×`)
  or a memory size with decimals (`6.6 GiB`) outside a marker fails, unless it is
  approximate (`~`), its line says it is computed, or it sits in a code block.

    python3 scripts/check_figures.py
"""

import glob
import re
import sys

MARKER = re.compile(r"<!-- fig:([a-z0-9.-]+) -->")
# Measured-looking figures: a speed, a ratio, or a memory size with decimals (settings such
# as `64 MiB` or `1 GiB` are whole numbers).
FIGURE = re.compile(
    r"(?<![~\w.,])(?:\d[\d,]*(?:\.\d+)?\s?(?:tokens/s|tok/s|pairs/s|×|x faster)"
    r"|\d+[.,]\d+\s?(?:GiB|MiB))"
)


def current_figures(text):
    """KEY -> value, from the tables under "## Current figures" (up to the next `## `)."""
    start = text.index("\n## Current figures")
    end = text.index("\n## ", start + 1)
    figures = {}
    for line in text[start:end].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if len(cells) >= 3 and re.fullmatch(r"`[a-z0-9.-]+`", cells[0]):
            figures[cells[0].strip("`")] = cells[2]
    return figures


def prose_lines(text):
    """(number, line) of the lines outside code fences."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def main():
    figures = current_figures(open("BENCHMARKS.md").read())
    if not figures:
        sys.exit("BENCHMARKS.md: no rows under Current figures")
    problems, quoted = [], 0
    for path in ["README.md", *sorted(glob.glob("docs/*.md"))]:
        text = open(path).read()
        for number, line in prose_lines(text):
            for match in MARKER.finditer(line):
                key, quoted = match.group(1), quoted + 1
                if key not in figures:
                    problems.append(f"{path}:{number}: fig:{key} is not a row of the current figures")
                elif not line[match.end():].startswith(figures[key]):
                    problems.append(f"{path}:{number}: fig:{key} must read `{figures[key]}`: {line.strip()}")
            if path != "README.md":
                continue
            quotes = {line[m.end():].split(" ")[0] for m in MARKER.finditer(line)}
            for match in FIGURE.finditer(MARKER.sub("", line)):
                figure = match.group(0)
                if "computed" in line or figure.split(" ")[0] in quotes:
                    continue
                problems.append(
                    f"{path}:{number}: `{figure}` is not quoted from BENCHMARKS.md's current "
                    f"figures (mark it <!-- fig:KEY --> or say it is computed)"
                )
    for problem in problems:
        print(problem)
    print(f"{len(figures)} current figures, {quoted} quoted in README.md and docs/, "
          f"{len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
