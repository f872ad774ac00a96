"""``make bench``: every benchmark, one after the other (each writes its JSON under
benchmarks/results/ and prints a table). ``--quick`` passes the quick mode on where there is one.
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = [
    ("benchmarks.train_benchmark", False),
    ("benchmarks.drift_benchmark", True),
    ("benchmarks.stream_benchmark", True),
]


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (sys.argv[1:] if argv is None else argv)
    failed = []
    for module, has_quick in BENCHMARKS:
        cmd = [sys.executable, "-m", module] + (["--quick"] if quick and has_quick else [])
        print(f"== {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
