#!/usr/bin/env python3
"""Runs every `curl -s localhost:8080 ...` example of README.md against the server that
scripts/with_server.sh started: each must answer 2xx, and where README shows the answer (a
`# {...}` or `# [...]` comment after the command or on the lines below it), every key it
shows must be in the real answer, and the token counts it shows must be the real ones.

    scripts/with_server.sh python3 scripts/check_readme.py
"""

import json
import os
import re
import shlex
import subprocess
import sys

BASE = os.environ["ZERANK_URL"]
COUNTED = ("total_tokens", "prompt_tokens")


def keys(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from keys(v)
    elif isinstance(value, list):
        for v in value:
            yield from keys(v)


def numbers(value, name):
    """Every value of key `name` in the answer."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k == name:
                yield v
            yield from numbers(v, name)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v, name)


def main():
    lines = open("README.md").read().splitlines()
    count = 0
    for i, line in enumerate(lines):
        if not line.startswith("curl -s localhost:8080"):
            continue
        command, _, inline = line.partition("  #")
        shown = inline.strip()
        for below in lines[i + 1:]:
            if not below.startswith("#") or below.startswith("# curl") or not re.match(r"#\s+[\[{\"]", below):
                break
            shown += below[1:].strip()
        argv = shlex.split(command.replace("localhost:8080", BASE.removeprefix("http://")))
        result = subprocess.run(argv + ["-w", "\n%{http_code}"], capture_output=True, text=True)
        body, _, status = result.stdout.rpartition("\n")
        if not status.startswith("2"):
            sys.exit(f"README example answered {status}: {line}\n{body}")
        count += 1
        if not shown.startswith(("{", "[")):
            continue
        answer = json.loads(body)
        real = set(keys(answer))
        for key in re.findall(r'"(\w+)":', shown):
            if key not in real:
                sys.exit(f"README shows `{key}` that the answer lacks: {line}\n{body}")
        for name in COUNTED:
            for documented in re.findall(rf'"{name}":(\d+)', shown):
                if int(documented) not in list(numbers(answer, name)):
                    sys.exit(f"README shows {name} {documented}, the answer {list(numbers(answer, name))}: {line}")
    print(f"{count} README curl examples answered 2xx, with the keys and counts README shows")
    if count < 10:
        sys.exit("fewer README examples than expected")


if __name__ == "__main__":
    main()
