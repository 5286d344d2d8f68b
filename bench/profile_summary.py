"""Summarise a py-spy raw (collapsed stacks) profile: top functions by self and total time.

python -m bench.profile_summary PROFILE.txt [N]   # from the checkout's root
"""

from __future__ import annotations

import sys
from collections import Counter


def main() -> None:
    path = sys.argv[1]
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 25
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            samples += n
            frames = stack.split(";")
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    print(f"{samples} samples")
    for title, counter in (("self", own), ("total", total)):
        print(f"--- {title}")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / samples:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
