"""Summarise a py-spy "raw" (collapsed stacks) profile: where the samples went.

`http_updates.py --profile DIR` records one such file per run with
`py-spy record --format raw`; this turns it into four short tables:
self time by function (the leaf frame), inclusive time by function (counted
once per stack), and inclusive and self time by area (the server's modules,
aiohttp, logging, the stores' drivers, ...; self time goes to the innermost
frame that belongs to an area, so those rows add up to 100%).

Run:

    python -m loadtest.pyspy_summary /tmp/prof/sqlite-default-r1.txt [--top 15]

Prints the percentage of all samples for each row.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtest.common import format_table

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

# First match wins: (area, substring of the frame's file).
AREAS: list[tuple[str, str]] = [
    ("server: logging (JSON log lines)", "server/logs.py"),
    ("stdlib logging", "logging/"),
    ("server: sqlite store", "server/sqlite.py"),
    ("server: postgres store", "server/postgres.py"),
    ("server: batch plan", "server/store.py"),
    ("server: writer", "server/writer.py"),
    ("server: http handlers", "server/http.py"),
    ("server: service/validation", "server/service.py"),
    ("server: service/validation", "server/validation.py"),
    ("server: tokens", "server/tokens.py"),
    ("server: board", "server/board.py"),
    ("server: broadcast (fan-out)", "server/broadcast.py"),
    ("server: websocket", "server/ws.py"),
    ("server: feed (events)", "server/feed.py"),
    ("server: sse", "server/sse.py"),
    ("asyncpg", "asyncpg/"),
    ("aiohttp", "aiohttp/"),
    ("thread pool", "concurrent/futures"),
    ("threading", "threading.py"),
    ("uuid", "uuid.py"),
    ("asyncio / uvloop loop", "asyncio/"),
    ("asyncio / uvloop loop", "uvloop/"),
]


@dataclass(frozen=True, slots=True)
class Frame:
    """One stack frame: function and file (line numbers dropped)."""

    func: str
    file: str

    def label(self) -> str:
        """`func (file)`, shortened to the part after site-packages / lib."""
        short = self.file.split("site-packages/")[-1]
        short = re.sub(r"^.*/lib/python3\.\d+/", "", short)
        return f"{self.func} ({short})"


def parse_frame(text: str) -> Frame:
    """A `func (file:line)` frame."""
    m = _FRAME.match(text.strip())
    if m is None:
        return Frame(text.strip(), "")
    return Frame(m["func"], m["file"])


def read_stacks(lines: Iterable[str]) -> list[tuple[list[Frame], int]]:
    """(frames root first, samples) per line of a raw profile."""
    stacks = []
    for line in lines:
        head, _, count = line.rstrip().rpartition(" ")
        if not head or not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in head.split(";")], int(count)))
    return stacks


def area_of(frame: Frame) -> str | None:
    """The area a frame belongs to, if any."""
    for area, needle in AREAS:
        if needle in frame.file:
            return area
    return None


@dataclass(frozen=True, slots=True)
class Summary:
    """Sample counts by leaf function, by function, and by area."""

    total: int
    self_time: Counter[str]
    inclusive: Counter[str]
    areas: Counter[str]
    area_self: Counter[str]


def summarise(stacks: Sequence[tuple[list[Frame], int]]) -> Summary:
    """Count samples three ways."""
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    area_self: Counter[str] = Counter()
    for frames, n in stacks:
        total += n
        if frames:
            self_time[frames[-1].label()] += n
        for label in {f.label() for f in frames}:
            inclusive[label] += n
        for area in {a for f in frames if (a := area_of(f)) is not None}:
            areas[area] += n
        innermost = next((a for f in reversed(frames) if (a := area_of(f)) is not None), "other")
        area_self[innermost] += n
    return Summary(total, self_time, inclusive, areas, area_self)


def render(summary: Summary, top: int = 15) -> str:
    """The three tables as text."""
    if not summary.total:
        return "(no samples)"

    def table(title: str, counts: Counter[str]) -> str:
        rows = [[f"{100 * n / summary.total:.1f}", label] for label, n in counts.most_common(top)]
        return f"{title}\n" + format_table(["% samples", "frame"], rows)

    return "\n\n".join(
        [
            f"{summary.total} samples",
            table("self time (leaf frame):", summary.self_time),
            table("inclusive time (frame anywhere on the stack):", summary.inclusive),
            table("inclusive time by area (a sample can count in several):", summary.areas),
            table(
                "self time by area (the innermost frame that has one; adds up to 100%):", summary.area_self
            ),
        ]
    )


def summarise_file(path: Path, top: int = 15) -> str:
    """Render the summary of one raw profile file."""
    return render(summarise(read_stacks(path.read_text().splitlines())), top)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profiles", type=Path, nargs="+", help="py-spy --format raw output files")
    p.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
    args = p.parse_args(argv)
    for path in args.profiles:
        print(f"== {path}")
        print(summarise_file(path, args.top))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
