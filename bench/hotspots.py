"""Top costs from a py-spy raw profile (collapsed stacks): where a process's CPU went, in text.

    python -m bench.hotspots bench/results/profile-paced-c100-w1.txt [--top 15]

`bench/run --profile raw` writes one beside each raw profile (`profile-NAME.top.txt`). Each line
of a raw profile is one stack, outermost frame first, `func (file:line);...` and a sample
count; py-spy leaves out idle samples by default, so the counts are CPU time. Frames are
grouped by function (the line numbers dropped): **own** counts the samples where the function
was the innermost frame, **inclusive** those where it was anywhere on the stack (once per
stack, so recursion is not counted twice). The entry frames every stack starts from (the
module, `main`, the server's and the event loop's `run`) are left out of the inclusive list;
their own samples stay in the other: on uvloop, the own samples of the loop's runner
(`Runner.run`, aiohttp's `run_app`) are time spent in the loop's C code (polling, socket
reads and writes, scheduling callbacks), which py-spy cannot see into.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# Paths shortened to what a reader recognises: the package's own path, or the module under site-packages.
PREFIXES = (re.compile(r".*/site-packages/"), re.compile(r".*/lib/python3\.\d+/"))
ENTRY = re.compile(
    r"^(<module>|_run_module_as_main|_run_code|main|run|asyncio_run|Runner\.run|Server\.run|Server\.serve"
    r"|run_app|BaseEventLoop\.run_\w+|Thread\._bootstrap\w*|Thread\.run) \("
)


def _function(frame: str, root: str) -> str:
    match = FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"].removeprefix(root)
    for prefix in PREFIXES:
        path = prefix.sub("", path, count=1)
    return f"{match['name']} ({path})"


def tally(raw: str, root: str = "") -> tuple[Counter[str], Counter[str], int]:
    """Own and inclusive samples per function, and the total number of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        functions = [_function(frame, root) for frame in stack.split(";")]
        total += samples
        own[functions[-1]] += samples
        for function in set(functions):
            inclusive[function] += samples
    return own, inclusive, total


def summary(raw: str, title: str, top: int = 15, root: str = "") -> str:
    own, inclusive, total = tally(raw, root)
    for function in [function for function in inclusive if ENTRY.match(function)]:
        del inclusive[function]
    lines = [f"Top costs: {title} ({total} samples; % of all samples)", ""]
    for heading, counts in (
        ("by own samples (the innermost frame)", own),
        ("by inclusive samples (the function and what it called; entry frames left out)", inclusive),
    ):
        lines.append(f"{heading}:")
        for function, samples in counts.most_common(top):
            lines.append(f"  {100 * samples / max(total, 1):5.1f}%  {samples:7d}  {function}")
        lines.append("")
    return "\n".join(lines)


def write_summary(profile: Path, title: str, root: str = "", top: int = 15) -> Path:
    """Writes `NAME.top.txt` beside the raw profile `NAME.txt`; returns its path."""
    output = profile.with_suffix(".top.txt")
    output.write_text(summary(profile.read_text(), title, top, root))
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path, help="a py-spy raw profile (collapsed stacks)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(summary(args.profile.read_text(), args.profile.name, args.top))


if __name__ == "__main__":
    main()
