#!/usr/bin/env python3
"""Checks README.md and docs/*.md against the server that scripts/with_server.sh started, and
runs their fresh-clone path verbatim.

- Every `curl -s localhost:8080 ...` line must answer 2xx, and where README shows the answer
  (a `# {...}` or `# [...]` comment after the command or on the lines below it), every key it
  shows must be in the real answer, and the token counts it shows must be the real ones.
- The code blocks marked with an HTML comment on the line above their fence run as written,
  with the binary under test on PATH as `zerank-server` (README's Quick start installs it so),
  in a scratch directory that holds the repository's `tests`, `examples` and `config`:
  - `<!-- check_readme: run -->`: each command line must exit 0, or fail where its comment
    says `# refused`.
  - `<!-- check_readme: server -->`: the first command starts a server (ZERANK_PORT points
    it at a free port, ZERANK_HOST at loopback: the command itself is not changed); once
    `/health` answers 200, each curl line of the block is checked as above against it.
  The marked blocks README must hold are counted, so that a marker cannot drop silently.

    scripts/with_server.sh python3 scripts/check_readme.py
"""

import glob
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BASE = os.environ["ZERANK_URL"]
COUNTED = ("total_tokens", "prompt_tokens")
# The marked blocks README and docs/ hold: the Quick start's server and offline run
# (README.md), the offline scoring sequence (docs/offline.md).
MARKED = {"server": 1, "run": 2}


def checked_documents():
    """README.md, then docs/*.md: the blocks are checked wherever they live."""
    return ["README.md", *sorted(glob.glob("docs/*.md"))]


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


def check_curl(lines, i, base):
    """Runs README's curl command on line `i` against `base`, as the module says."""
    line = lines[i]
    command, _, inline = line.partition("  #")
    shown = inline.strip()
    for below in lines[i + 1:]:
        if not below.startswith("#") or below.startswith("# curl") or not re.match(r"#\s+[\[{\"]", below):
            break
        shown += below[1:].strip()
    argv = shlex.split(command.replace("localhost:8080", base.removeprefix("http://")))
    result = subprocess.run(argv + ["-w", "\n%{http_code}"], capture_output=True, text=True)
    body, _, status = result.stdout.rpartition("\n")
    if not status.startswith("2"):
        sys.exit(f"README example answered {status}: {line}\n{body}")
    if not shown.startswith(("{", "[")):
        return
    answer = json.loads(body)
    real = set(keys(answer))
    for key in re.findall(r'"(\w+)":', shown):
        if key not in real:
            sys.exit(f"README shows `{key}` that the answer lacks: {line}\n{body}")
    for name in COUNTED:
        for documented in re.findall(rf'"{name}":(\d+)', shown):
            if int(documented) not in list(numbers(answer, name)):
                sys.exit(f"README shows {name} {documented}, the answer {list(numbers(answer, name))}: {line}")


def marked_blocks(lines):
    """(kind, first line number, command lines) of each block under a check_readme marker."""
    for i, line in enumerate(lines):
        marker = re.fullmatch(r"<!-- check_readme: (\w+) -->", line.strip())
        if not marker:
            continue
        if not lines[i + 1].startswith("```"):
            sys.exit(f"README line {i + 1}: a check_readme marker must sit on the line above a code fence")
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        commands = [(j, lines[j]) for j in range(i + 2, end) if lines[j].strip() and not lines[j].startswith("#")]
        yield marker.group(1), i + 1, commands


def scratch_directory():
    """A directory where README's relative paths resolve as in a fresh clone."""
    scratch = tempfile.mkdtemp(prefix="check_readme.")
    for name in ("tests", "examples", "config"):
        os.symlink(os.path.abspath(name), os.path.join(scratch, name))
    return scratch


def environment():
    binary = os.path.abspath(os.environ["ZERANK_BINARY"])
    if os.path.basename(binary) != "zerank-server":
        sys.exit(f"ZERANK_BINARY must be a file named zerank-server: {binary}")
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(binary) + os.pathsep + env["PATH"]
    return {k: v for k, v in env.items() if not k.startswith("ZERANK_") or k == "ZERANK_BINARY"}


def run_block(commands, cwd, env):
    for number, line in commands:
        refused = re.search(r"#\s*refused", line) is not None
        result = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True)
        if (result.returncode != 0) != refused:
            want = "to be refused" if refused else "to succeed"
            sys.exit(f"README line {number + 1} was expected {want} (exit {result.returncode}): {line}\n{result.stderr}")


def serve_block(lines, commands, cwd, env):
    (number, server), rest = commands[0], commands[1:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(env, ZERANK_PORT=str(port), ZERANK_HOST="127.0.0.1")
    process = subprocess.Popen(["bash", "-c", "exec " + server], cwd=cwd, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if process.poll() is not None:
                sys.exit(f"README line {number + 1} exited {process.returncode}: {server}\n{process.stderr.read()}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                sys.exit(f"README line {number + 1} never became healthy: {server}")
            time.sleep(0.1)
        curls = [j for j, line in rest if line.startswith("curl -s localhost:8080")]
        if len(curls) != len(rest) or not curls:
            sys.exit(f"README line {number + 1}: a server block holds the server, then curl lines")
        for j in curls:
            check_curl(lines, j, base)
    finally:
        process.terminate()
        process.wait()


def main():
    documents = {path: open(path).read().splitlines() for path in checked_documents()}
    count = 0
    for path, lines in documents.items():
        for i, line in enumerate(lines):
            if line.startswith("curl -s localhost:8080"):
                check_curl(lines, i, BASE)
                count += 1
    print(f"{count} curl examples of README.md and docs/ answered 2xx, with the keys and counts they show")
    if count < 10:
        sys.exit("fewer curl examples than expected")

    cwd, env = scratch_directory(), environment()
    found = {kind: 0 for kind in MARKED}
    for path, lines in documents.items():
        for kind, number, commands in marked_blocks(lines):
            if kind not in MARKED or not commands:
                sys.exit(f"{path} line {number}: unknown or empty check_readme block `{kind}`")
            found[kind] += 1
            if kind == "run":
                run_block(commands, cwd, env)
            else:
                serve_block(lines, commands, cwd, env)
    if found != MARKED:
        sys.exit(f"marked blocks of README.md and docs/: {found}, expected {MARKED}")
    print(f"the marked blocks of README.md and docs/ ran as written: {found}")


if __name__ == "__main__":
    main()
