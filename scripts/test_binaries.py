"""Reads `cargo test --no-run --message-format=json…` on stdin and prints the
test binaries it built, one per line: `name<TAB>package dir<TAB>executable`,
the ones known to take longest first (scripts/test.sh runs them a few at a
time, so a long one started last would end the stage alone)."""

import json
import os
import sys

# Longest first, by the times in a full run of scripts/test.sh (seconds on the
# 2-core CI machine: security_input 84, soak 61, notifications 58,
# plugin_languages 55, fuzz 28, hooks 20, events 11, store_contract 11).
LONGEST = [
    "security_input",
    "soak",
    "notifications",
    "plugin_languages",
    "fuzz",
    "hooks",
    "events",
    "store_contract",
    "hostile_load",
    "faults",
    "import",
]

binaries = []
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    if not msg.get("profile", {}).get("test"):
        continue
    target = msg["target"]
    kind = target["kind"][0]
    name = target["name"] if kind == "test" else f"{target['name']} ({kind})"
    binaries.append((name, os.path.dirname(msg["manifest_path"]), msg["executable"]))


def rank(b):
    name = b[0]
    return (LONGEST.index(name) if name in LONGEST else len(LONGEST), name)


for name, directory, exe in sorted(binaries, key=rank):
    print(f"{name}\t{directory}\t{exe}")
