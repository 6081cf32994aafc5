#!/usr/bin/env python3
"""Imports flow one way: fails when two modules of src/ import each other, directly or
through others (STYLE.md). Part of the test command.

A module is a file (`foo/mod.rs` is `foo`). An edge A → B is any path A names that lands in
B: `use crate::…`, `use super::…`, a `crate::…` path in code, or `child::…` in a parent
module. Test modules (`#[cfg(test)]` to the end of a file) do not count.

    python3 scripts/check-imports.py [src]      # prints the graph's cycles, exit 1 if any
"""

import collections
import pathlib
import re
import sys

ROOT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent / "src")


def module_name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "mod":
        parts = parts[:-1]
    return "::".join(parts)


def split_tree(body):
    """The items of a use tree's braces, nested groups kept whole."""
    items, depth, current = [], 0, ""
    for ch in body + ",":
        depth += ch == "{"
        depth -= ch == "}"
        if ch == "," and depth == 0:
            if current.strip():
                items.append(current.strip())
            current = ""
        else:
            current += ch
    return items


def expand(prefix, body):
    """Every path a use tree names, e.g. ("a", "b::{c, d::e}") → ["a::b::c", "a::b::d::e"]."""
    paths = []
    for item in split_tree(body):
        item = item.split(" as ")[0].strip()
        group = re.match(r"^([\w:]*?)::\{(.*)\}$", item, re.S) or re.match(r"^()\{(.*)\}$", item, re.S)
        joined = lambda rest: "::".join(p for p in (prefix, rest) if p)
        if group:
            paths += expand(joined(group.group(1)), group.group(2))
        else:
            paths.append(joined(item))
    return paths


def main():
    modules = {}
    for path in ROOT.rglob("*.rs"):
        if path.name in ("lib.rs", "main.rs"):
            continue
        modules[module_name(path)] = path.read_text().split("#[cfg(test)]")[0]

    def resolve(path):
        segments = [s for s in path.split("::") if s and s != "self"]
        for i in range(len(segments), 0, -1):
            candidate = "::".join(segments[:i])
            if candidate in modules:
                return candidate
        return None

    edges = collections.defaultdict(set)
    for name, text in modules.items():
        parent = name.split("::")[:-1]
        paths = []
        for use in re.findall(r"\buse\s+([^;]+);", text, re.S):
            use = use.strip()
            for root, base in (("crate::", []), ("super::", parent)):
                if use.startswith(root):
                    named = expand("", "{" + use[len(root):] + "}") if not use[len(root):].startswith("{") else expand("", use[len(root):][1:-1])
                    paths += ["::".join(base + [p]) for p in named]
        paths += re.findall(r"(?<![\w:])crate::((?:\w+::)*\w+)", text)
        for child in modules:
            if child.count("::") == name.count("::") + 1 and child.startswith(name + "::" if name else ""):
                if re.search(r"(?<![\w:])" + child.split("::")[-1] + r"::", text):
                    paths.append(child)
        for path in paths:
            target = resolve(path)
            if target and target != name:
                edges[name].add(target)

    cycles = set()
    for start in modules:
        stack, seen = [(start, [start])], set()
        while stack:
            node, trail = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == start:
                    i = trail.index(min(trail))
                    cycles.add(tuple(trail[i:] + trail[:i]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
    for cycle in sorted(cycles, key=len):
        print("import cycle: " + " → ".join(cycle + (cycle[0],)))
    print(f"[imports] {len(modules)} modules, {sum(len(v) for v in edges.values())} edges, {len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
