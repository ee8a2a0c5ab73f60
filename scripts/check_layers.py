#!/usr/bin/env python3
"""The import rules of src/ (README, How it works): every `crate::`/`super::` path that a
non-test module names must run down the floors, and the modules may form no import circle.
Prints what breaks them; exit 1 if anything does.

    python3 scripts/check_layers.py [src]
"""
import os
import re
import sys

# Each floor may import only floors with a lower number (and itself).
FLOORS = {
    # The composition root of `serve`: listeners, the HTTP layer over the service, drain.
    "server": 60,
    "http": 50,
    "service": 40,
    "offline": 40,
    "batcher": 30,
    "settings": 25,
    "model": 20,
    "model/checkpoint": 15,
    "model/backend": 15,
    "model/error": 10,
    "telemetry": 5,
    "metrics": 5,
    "json": 0,
    "choice": 0,
}
# main.rs and lib.rs wire the floors together.
WIRING = {"", "main"}
MAX_CIRCLES = 0


def modules(root):
    """Module path (a tuple of names) -> file, for every .rs file under root."""
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(folder, name)
            parts = tuple(os.path.relpath(path, root)[:-3].split(os.sep))
            if parts[-1] in ("mod", "lib"):
                parts = parts[:-1]
            found[parts] = path
    return found


def code_of(path):
    """The file's text without comments, test modules or `pub(in ...)` paths."""
    text = open(path, encoding="utf-8").read()
    text = re.sub(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod \w+\s*\{.*", "", text, flags=re.S)
    text = re.sub(r"#\[cfg\(test\)\]\s*mod \w+;", "", text)
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"pub\(in [^)]*\)", "", text)


def imports(module, path, known):
    """The modules `module` names through crate:: and super:: paths."""
    def resolve(parts):
        for n in range(len(parts), 0, -1):
            if tuple(parts[:n]) in known:
                return tuple(parts[:n])
        return None

    text = code_of(path)
    found = set()
    for match in re.finditer(r"\b(crate|super)((?:::(?:super|[A-Za-z_]\w*))*)(::\{)?", text):
        base = [] if match.group(1) == "crate" else list(module[:-1])
        segments = [s for s in match.group(2).split("::") if s]
        while segments and segments[0] == "super":
            base, segments = base[:-1], segments[1:]
        base += segments
        if match.group(3):
            # `path::{a::b, c}`: each item, nested braces read up to their first name.
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"{": 1, "}": -1}.get(text[end], 0)
                end += 1
            for item in re.split(r",(?![^{]*\})", text[match.end():end - 1]):
                names = re.findall(r"\w+", item.split("{")[0])
                target = resolve(base + names)
                if target is not None:
                    found.add(target)
        else:
            target = resolve(base)
            if target is not None:
                found.add(target)
    found.discard(module)
    found.discard(())
    return found


def floor_of(module):
    for n in range(len(module), 0, -1):
        key = "/".join(module[:n])
        if key in FLOORS:
            return key
    return None


def circles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, result = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in list(graph):
        if node not in index:
            visit(node)
    return result


def main():
    root = sys.argv[1] if len(sys.argv) > 1 else "src"
    known = modules(root)
    graph = {m: imports(m, p, known) for m, p in known.items()
             if not (m and m[-1] in ("tests", "testing"))}
    problems = []
    for module, targets in sorted(graph.items()):
        name = "/".join(module)
        if name in WIRING:
            continue
        floor = floor_of(module)
        if floor is None:
            problems.append(f"{name}: on no floor (add it to FLOORS in {sys.argv[0]})")
            continue
        for target in sorted(targets):
            other = floor_of(target)
            if other is None or other == floor or "/".join(target) in WIRING:
                continue
            if FLOORS[other] >= FLOORS[floor]:
                problems.append(f"{name} imports {'/'.join(target)}: up or across a floor "
                                f"({floor} {FLOORS[floor]} -> {other} {FLOORS[other]})")
    found = circles({m: t for m, t in graph.items() if "/".join(m) not in WIRING})
    for component in found:
        print("circle:", ", ".join("/".join(m) for m in component))
    if len(found) > MAX_CIRCLES:
        problems.append(f"{len(found)} import circles, at most {MAX_CIRCLES} allowed")
    for problem in problems:
        print(problem)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, "
          f"{len(found)} circle(s), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
