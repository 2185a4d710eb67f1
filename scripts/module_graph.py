#!/usr/bin/env python3
"""Prints the module import graph of gateway/src and what is wrong with it.

Reads every `use crate::…`, `crate::x::…`, `super::…`, `self::…` path (and,
in lib.rs, paths that start with a top-level module; in main.rs,
`session_gateway::…`) outside comments, strings and `#[cfg(test)]` items,
maps each to the file that defines it and to its top-level module, and prints:

- the strongly connected components (import cycles) of more than one
  top-level module and of more than one file;
- every import from a lower layer to a higher one (LAYERS below);
- files over the line limit;
- modules missing from lib.rs's crate map.

A named `pub use` is followed: a path through a re-export counts as an
import of the file that defines the item, and the re-export itself is not
counted as an import of the re-exporting module in the cycles
(`--count-reexports` counts it); a re-export from a higher layer is still an
upward import. Glob re-exports are neither followed (users stay with the
re-exporting file) nor counted. Paths inside `macro_rules!` bodies that start
with `self`/`super` are skipped (they resolve where the macro is used).

Usage: scripts/module_graph.py [--src gateway/src] [--edges] [--cycle-edges]
                               [--count-reexports] [--check]
  --edges        also list every module-level edge (with the files behind it)
  --cycle-edges  list the imports inside each file cycle
  --check        exit 1 when a cycle spans more than --max-cycle files (5), an
                 import goes upward, a file is over --max-lines (800), or the
                 crate map misses a module

Its own tests: python3 -m unittest scripts/test_module_graph.py
"""

import argparse
import os
import re
import sys
from collections import defaultdict

# Higher number = higher layer. An import may only go to the same or a
# lower layer (cycles inside a layer are reported as SCCs). The order is
# issue #15's: routes → service → {hooks, store, events, …} → model.
# `api` (the HTTP views) converts store and hook values (and maps a
# `StoreError` onto an `AppError`), so it sits above them, below the
# handlers; `import` is a command beside the service.
LAYERS = {
    "main": 6,
    "lib": 5,
    "server": 5,
    "routes": 5,
    "openapi": 5,
    "state": 5,
    "service": 4,
    "import": 4,
    "api": 3,
    "hooks": 2,
    "store": 2,
    "events": 2,
    "outbox": 2,
    "stream": 2,
    "limits": 2,
    "observe": 2,
    "config": 1,
    "auth": 1,
    "error": 1,
    "extract": 1,
    "metadata": 1,
    "model": 0,
}

LINE_LIMIT = 800


def strip(text):
    """Blanks comments and string/char literals, keeping line structure."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        m = re.compile(r'b?r(#*)"').match(text, i)
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + m.group(1)
            j = text.find(end, m.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime.
            m = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'").match(text, i)
            if m:
                out.append("' '")
                i = m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def drop_test_items(code):
    """Removes `#[cfg(test)]` items (test modules and test-only functions)."""
    while True:
        m = re.search(r"#\[cfg\(test\)\]", code)
        if not m:
            return code
        j = m.end()
        # The item ends at its first top-level `;` or its balanced `{…}`.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        code = code[: m.start()] + "\n" * code.count("\n", m.start(), j) + code[j:]


def block_end(code, open_brace):
    """The index just past the `}` matching the `{` at `open_brace`."""
    depth = 0
    for j in range(open_brace, len(code)):
        if code[j] == "{":
            depth += 1
        elif code[j] == "}":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(code)


def expand_use(tree):
    """`a::{b as c, d::{e, self}}` → [([a,b],"c"), ([a,d,e],None), ([a,d],None)]."""
    tree = re.sub(r"\s", "", re.sub(r"\s+as\s+", "@", tree))

    def parse(s, prefix):
        paths = []
        depth, start, parts = 0, 0, []
        for k, ch in enumerate(s):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            elif ch == "," and depth == 0:
                parts.append(s[start:k])
                start = k + 1
        parts.append(s[start:])
        for p in parts:
            p = p.strip()
            if not p:
                continue
            b = p.find("{")
            if b >= 0:
                head = [x for x in p[:b].split("::") if x]
                paths += parse(p[b + 1 : p.rfind("}")], prefix + head)
                continue
            alias = None
            if "@" in p:
                p, alias = p.split("@", 1)
            segs = [x for x in p.split("::") if x]
            if segs and segs[-1] == "*":
                segs, alias = segs[:-1], "*"
            elif segs and segs[-1] == "self":
                segs = segs[:-1]
            paths.append((prefix + segs, alias))
        return paths

    return parse(tree, [])


class Crate:
    def __init__(self, src):
        self.src = src
        self.files = {}  # rel path -> module path (tuple)
        for root, _, names in os.walk(src):
            for name in names:
                if not name.endswith(".rs"):
                    continue
                rel = os.path.relpath(os.path.join(root, name), src)
                parts = rel[:-3].split(os.sep)
                if parts[-1] == "mod":
                    parts = parts[:-1]
                if parts in (["lib"], ["main"]):
                    parts = []
                self.files[rel] = tuple(parts)
        self.by_module = {m: f for f, m in self.files.items() if f != "main.rs"}

        self.parsed = {}

    def file_of(self, path, hops=0):
        """The file defining what `path` (a crate path) names: the deepest
        module on it, following that module's `pub use` re-exports."""
        path = tuple(path)
        for k in range(len(path), -1, -1):
            f = self.by_module.get(path[:k])
            if f:
                if k < len(path) and hops < 8:
                    target = self.parse(f)[1].get(path[k])
                    if target is not None and tuple(target) != path[: k + 1]:
                        return self.file_of(tuple(target) + path[k + 1 :], hops + 1)
                return f
        return "lib.rs"

    def refs(self, rel):
        """Crate paths `rel` refers to, as (path, line, is a re-export)."""
        return self.parse(rel)[0]

    def parse(self, rel):
        """(references, re-exports) of `rel`; re-exports map a name to the
        crate path it stands for."""
        if rel in self.parsed:
            return self.parsed[rel]
        self.parsed[rel] = ([], {})  # re-export cycles end here
        with open(os.path.join(self.src, rel), encoding="utf-8") as fh:
            code = drop_test_items(strip(fh.read()))
        here = self.files[rel]
        children = set(re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, re.M))
        top = {m[0] for m in self.by_module if m}
        found, exports = [], {}

        def resolve(segs, pos):
            if not segs:
                return None
            if rel == "main.rs":
                if segs[0] == "session_gateway":
                    return segs[1:]
                return None
            if segs[0] == "crate":
                return segs[1:]
            if segs[0] in ("self", "super"):
                if in_macro(pos):
                    return None
                base = module_at(pos)
                while segs and segs[0] in ("self", "super"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
                return base + segs
            if segs[0] in children:
                return list(here) + segs
            if here == () and segs[0] in top:
                return segs
            return None

        def line_of(pos):
            return code.count("\n", 0, pos) + 1

        # Inline `mod name { … }` blocks change what `self`/`super` mean;
        # `macro_rules!` bodies resolve them where the macro is invoked, so
        # their relative paths are skipped.
        inline, macros = [], []
        for m in re.finditer(r"\b(?:mod\s+(\w+)|macro_rules!\s*\w+)\s*\{", code):
            end = block_end(code, m.end() - 1)
            (inline if m.group(1) else macros).append((m.start(), end, m.group(1)))

        def module_at(pos):
            return list(here) + [n for a, b, n in inline if a <= pos < b]

        def in_macro(pos):
            return any(a <= pos < b for a, b, _ in macros)

        spans = []
        for m in re.finditer(r"\b(pub(?:\([^)]*\))?\s+)?use\s+([^;]+);", code):
            spans.append((m.start(), m.end()))
            public = m.group(1) and len(module_at(m.start())) == len(here)
            for p, alias in expand_use(m.group(2)):
                r = resolve(p, m.start())
                if r is None:
                    continue
                reexport = bool(public and r)
                if reexport and alias != "*":
                    # A re-export is the module's interface: users of a
                    # named one are sent to the file defining it.
                    exports[alias or r[-1]] = r
                found.append((r, line_of(m.start()), reexport))
        path_re = re.compile(r"(?<![\w:])((?:[A-Za-z_]\w*)(?:::[A-Za-z_]\w*)+)")
        for m in path_re.finditer(code):
            if any(a <= m.start() < b for a, b in spans):
                continue
            r = resolve(m.group(1).split("::"), m.start())
            if r is not None:
                found.append((r, line_of(m.start()), False))
        self.parsed[rel] = (found, exports)
        return self.parsed[rel]


def top_of(crate, rel):
    mod = crate.files[rel]
    if rel == "main.rs":
        return "main"
    return mod[0] if mod else "lib"


def sccs(nodes, edges):
    """Tarjan's algorithm; returns components, largest first."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return sorted(out, key=len, reverse=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--src", default=os.path.join(here, "..", "gateway", "src"), help="the crate's src dir"
    )
    ap.add_argument("--edges", action="store_true", help="list every module-level import")
    ap.add_argument("--check", action="store_true", help="exit 1 when anything is listed")
    ap.add_argument(
        "--cycle-edges", action="store_true", help="list the imports inside each file cycle"
    )
    ap.add_argument(
        "--count-reexports",
        action="store_true",
        help="count a named `pub use` as an import of the file re-exporting it",
    )
    ap.add_argument(
        "--max-cycle", type=int, default=5, help="largest file cycle --check accepts"
    )
    ap.add_argument("--max-lines", type=int, default=LINE_LIMIT, help="longest file accepted")
    args = ap.parse_args()

    crate = Crate(os.path.normpath(args.src))
    file_edges = defaultdict(set)
    file_sites = defaultdict(set)  # (a, b) -> {line}
    mod_edges = defaultdict(lambda: defaultdict(set))  # a -> b -> {"file:line"}
    reexport_edges = defaultdict(lambda: defaultdict(set))
    for rel in sorted(crate.files):
        a = top_of(crate, rel)
        for path, line, reexport in crate.refs(rel):
            target = crate.file_of(path)
            b = top_of(crate, target) if path else "lib"
            if reexport and not args.count_reexports:
                # Not a use by the file's code (no cycle through it), but a
                # re-export from a higher layer still makes a lower module's
                # interface depend on it.
                if b != a:
                    reexport_edges[a][b].add(f"{rel}:{line}")
                continue
            if target != rel:
                file_edges[rel].add(target)
                file_sites[(rel, target)].add(line)
            if b != a:
                mod_edges[a][b].add(f"{rel}:{line}")

    modules = {top_of(crate, f) for f in crate.files}
    failures = 0

    print(f"{len(crate.files)} files, {len(modules)} top-level modules")
    print()
    mod_sccs = [c for c in sccs(modules, {a: set(bs) for a, bs in mod_edges.items()}) if len(c) > 1]
    print(f"module cycles (SCCs of more than one top-level module): {len(mod_sccs)}")
    for c in mod_sccs:
        print(f"  {len(c)}: {' '.join(c)}")
    file_sccs = [c for c in sccs(set(crate.files), file_edges) if len(c) > 1]
    print(f"file cycles (SCCs of more than one file): {len(file_sccs)}")
    for c in file_sccs:
        print(f"  {len(c)}: {' '.join(c)}")
        if args.cycle_edges:
            members = set(c)
            for a in c:
                for b in sorted(file_edges[a] & members):
                    lines = ",".join(str(n) for n in sorted(file_sites[(a, b)]))
                    print(f"      {a} -> {b} (lines {lines})")
    largest = len(file_sccs[0]) if file_sccs else 1
    if largest > args.max_cycle:
        failures += 1
    print()

    unknown = sorted(m for m in modules if m not in LAYERS)
    if unknown:
        print(f"modules without a layer (add them to LAYERS): {' '.join(unknown)}")
        failures += 1
    upward = []
    for a in sorted(set(mod_edges) | set(reexport_edges)):
        for b in sorted(set(mod_edges[a]) | set(reexport_edges[a])):
            if a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]:
                upward.append((a, b, sorted(mod_edges[a][b] | reexport_edges[a][b])))
    print(f"upward imports (lower layer -> higher layer): {len(upward)}")
    for a, b, sites in upward:
        print(f"  {a} ({LAYERS[a]}) -> {b} ({LAYERS[b]}): {', '.join(sites)}")
    failures += len(upward)
    print()

    long_files = []
    for rel in sorted(crate.files):
        with open(os.path.join(crate.src, rel), encoding="utf-8") as fh:
            n = sum(1 for _ in fh)
        if n > args.max_lines:
            long_files.append((rel, n))
    print(f"files over {args.max_lines} lines: {len(long_files)}")
    for rel, n in long_files:
        print(f"  {rel}: {n}")
    failures += len(long_files)
    print()

    with open(os.path.join(crate.src, "lib.rs"), encoding="utf-8") as fh:
        lib = fh.read()
    declared = re.findall(r"^pub mod (\w+);", lib, re.M)
    mapped = set(re.findall(r"^//! - \[`(\w+)`\]", lib, re.M))
    missing = [m for m in declared if m not in mapped]
    print(f"modules missing from lib.rs's crate map: {len(missing)} {' '.join(missing)}")
    failures += len(missing)

    if args.edges:
        print()
        print("module edges:")
        for a in sorted(mod_edges):
            for b in sorted(mod_edges[a]):
                sites = sorted(mod_edges[a][b])
                print(f"  {a} -> {b}  ({len(sites)}: {', '.join(sites[:4])}{' …' if len(sites) > 4 else ''})")

    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
