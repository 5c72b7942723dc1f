"""Finding the processes of a local Ray cluster from /proc, for fault injection and memory measurements: Ray names a
worker after the actor or task it runs (setproctitle, e.g. b"ray::ExpertActor.run"), and /proc shows it."""

from __future__ import annotations

import os
from pathlib import Path


def processes_named(prefix: bytes) -> list[int]:
    """Pids of processes whose command line starts with `prefix`."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if f.read().startswith(prefix):
                        found.append(int(entry))
            except OSError:  # the process ended while we looked
                pass
    return found


def descendants(root: int) -> set[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def alive(pids: set[int] | list[int]) -> list[int]:
    """Those of `pids` still running (a zombie, dead but not yet reaped, is not)."""
    left = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.append(pid)
    return left
