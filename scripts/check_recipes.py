#!/usr/bin/env python3
"""The client recipes of docs/integrations.md: the files of scripts/recipes/ that the page
includes verbatim, run against a live server.

    python3 scripts/check_recipes.py sync [--fix]
        Every `<!-- recipe: PATH -->` block of docs/integrations.md must be PATH's content,
        and every recipe file must have a block; --fix copies the files into the page.
    python3 scripts/check_recipes.py run URL MODEL --python PYTHON --tsx TSX [--fix]
        Runs each recipe (ZERANK_URL=URL, ZERANK_MODEL=MODEL): each must print the two best
        documents, best first, as `score  text`, with the scores /v1/rerank gives, and what
        the page's `<!-- output: PATH -->` block shows; --fix writes the outputs into the page.

scripts/check_recipes.sh installs the clients and runs both.
"""

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

DOCS = "docs/integrations.md"
RECIPES = "scripts/recipes"
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "The Eiffel Tower is in Paris.",
    "France is in Western Europe.",
]
TOP = 2  # every recipe asks for the two best
BLOCK = r"(<!-- {kind}: ([\w./-]+) -->\n```\w*\n)(.*?)(```)"


def recipe_files():
    return sorted(
        f"{RECIPES}/{name}" for name in os.listdir(RECIPES) if name.endswith((".py", ".ts")) and not name.endswith(".d.ts")
    )


def blocks(text, kind):
    """PATH -> the content of the fenced block after `<!-- KIND: PATH -->`."""
    return {m.group(2): m.group(3) for m in re.finditer(BLOCK.format(kind=kind), text, re.S)}


def replace_blocks(text, kind, contents):
    def swap(m):
        return m.group(1) + contents[m.group(2)] + m.group(4) if m.group(2) in contents else m.group(0)

    return re.sub(BLOCK.format(kind=kind), swap, text, flags=re.S)


def sync(fix):
    text = open(DOCS, encoding="utf-8").read()
    shown = blocks(text, "recipe")
    files = {path: open(path, encoding="utf-8").read() for path in recipe_files()}
    problems = [f"{path} is not included in {DOCS}" for path in files if path not in shown]
    problems += [f"{DOCS} includes {path}, which does not exist" for path in shown if path not in files]
    stale = [path for path in files if path in shown and shown[path] != files[path]]
    if fix and stale:
        open(DOCS, "w", encoding="utf-8").write(replace_blocks(text, "recipe", files))
        print(f"copied into {DOCS}: {', '.join(stale)}")
    else:
        problems += [f"{DOCS}'s block for {path} differs from the file (scripts/check_recipes.py sync --fix)" for path in stale]
    outputs = blocks(text, "output")
    problems += [f"{DOCS} shows no output for {path}" for path in files if path not in outputs]
    if problems:
        sys.exit("\n".join(problems))
    print(f"{len(files)} recipes included verbatim in {DOCS}")


def reference(url, model):
    """The two best documents and their scores, from the Cohere-shaped route itself."""
    body = json.dumps({"model": model, "query": QUERY, "documents": DOCUMENTS, "top_n": TOP}).encode()
    request = urllib.request.Request(f"{url}/v1/rerank", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        results = json.load(response)["results"]
    return "".join(f"{r['relevance_score']:.4f}  {DOCUMENTS[r['index']]}\n" for r in results)


def run(url, model, python, tsx, fix):
    expected = reference(url.rstrip("/"), model)
    env = dict(os.environ, ZERANK_URL=url, ZERANK_MODEL=model, HAYSTACK_TELEMETRY_ENABLED="False")
    failures, failed, outputs = [], set(), {}
    for path in recipe_files():
        command = [python, path] if path.endswith(".py") else [tsx, path]
        started = time.monotonic()
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        took = time.monotonic() - started
        printed = result.stdout
        outputs[path] = printed
        lines = [line for line in printed.splitlines() if line.strip()]
        parsed = [re.fullmatch(r"(-?\d+\.\d+)  (.*)", line) for line in lines]
        problem = None
        if result.returncode != 0:
            problem = f"exit {result.returncode}\n{result.stderr[-3000:]}"
        elif len(lines) != TOP or not all(parsed):
            problem = f"expected {TOP} lines `score  text`, got:\n{printed}"
        elif [float(m.group(1)) for m in parsed] != sorted((float(m.group(1)) for m in parsed), reverse=True):
            problem = f"not in descending score order:\n{printed}"
        elif any(m.group(2) not in DOCUMENTS for m in parsed):
            problem = f"prints a text that is not one of the documents:\n{printed}"
        elif printed != expected:
            problem = f"differs from /v1/rerank's answer:\n{printed}expected:\n{expected}"
        if problem:
            failures.append(f"{path}: {problem}")
            failed.add(path)
        print(f"{path}: {'FAILED' if problem else 'ok'} ({took:.1f} s)")
    text = open(DOCS, encoding="utf-8").read()
    shown = blocks(text, "output")
    stale = [path for path, printed in outputs.items() if path in shown and shown[path] != printed and path not in failed]
    if stale and fix:
        open(DOCS, "w", encoding="utf-8").write(replace_blocks(text, "output", outputs))
        print(f"outputs written into {DOCS}: {', '.join(stale)}")
    else:
        failures += [f"{DOCS} shows another output for {path} (scripts/check_recipes.py run ... --fix)" for path in stale]
    if failures:
        sys.exit("\n\n".join(failures))
    print(f"{len(outputs)} recipes printed the top {TOP}, best first, as /v1/rerank ranks them and as {DOCS} shows")


def main():
    args = sys.argv[1:]
    fix = "--fix" in args
    args = [a for a in args if a != "--fix"]
    if args[:1] == ["sync"] and len(args) == 1:
        sync(fix)
    elif args[:1] == ["run"] and len(args) == 7 and args[3] == "--python" and args[5] == "--tsx":
        run(args[1], args[2], args[4], args[6], fix)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    main()
