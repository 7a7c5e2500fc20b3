"""Summarise a py-spy ``--format raw`` profile (collapsed stacks): where the samples went.

``bench/run_all.py --profile`` records the inference process during the stack batch; this prints
the share of samples per thread, the top functions by self time, and the top functions by
inclusive time — all of them and only Loomstack's own (``loomstack_*`` modules)::

    python bench/profile_summary.py .cache/bench/stack-profile.txt [--top 30]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

OURS = ("loomstack_inference", "loomstack_kit", "loomstack_gateway", "loomstack/")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def frame_key(frame: str) -> str:
    """``function (file:line)`` → ``file:function`` (lines merged)."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['file']}:{match['func']}"


def parse(path: Path) -> list[tuple[list[str], int]]:
    """The stacks (outermost first) and their sample counts."""
    stacks: list[tuple[list[str], int]] = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append((stack.split(";"), int(count)))
    return stacks


def summarise(stacks: list[tuple[list[str], int]], top: int) -> str:
    """The report as text."""
    total = sum(count for _, count in stacks) or 1
    threads: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    ours_inclusive: Counter[str] = Counter()
    ours_self: Counter[str] = Counter()
    for frames, count in stacks:
        if frames and frames[0].startswith(("thread ", "process ")):
            threads[frames[0]] += count
            frames = frames[1:]
        else:
            threads["(all threads)"] += count
        keys = [frame_key(f) for f in frames]
        if keys:
            self_time[keys[-1]] += count
            # Our innermost frame owns the sample: "time below our code".
            for key in reversed(keys):
                if key.startswith(OURS) or any(o in key for o in OURS):
                    ours_self[key] += count
                    break
        for key in set(keys):
            inclusive[key] += count
            if any(o in key for o in OURS):
                ours_inclusive[key] += count

    def table(title: str, counter: Counter[str]) -> list[str]:
        lines = [f"\n## {title}", f"{'samples':>8} {'share':>7}  frame"]
        for key, count in counter.most_common(top):
            lines.append(f"{count:>8} {100 * count / total:>6.1f}%  {key}")
        return lines

    out = [f"# py-spy profile: {total} samples (non-idle)"]
    out += table("threads", threads)
    out += table("self time (leaf frames)", self_time)
    out += table("inclusive time, every frame", inclusive)
    out += table("inclusive time, Loomstack frames", ours_inclusive)
    out += table("innermost Loomstack frame of each sample (what our code led to)", ours_self)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description="Summarise a py-spy raw profile.")
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    args = parser.parse_args(argv)
    sys.stdout.write(summarise(parse(args.profile), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
