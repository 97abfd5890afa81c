"""Record what a `tuner run` printed as an example under studies/, with the command, dates, commit and CPU.

Nothing in the file is typed by hand: the table is the run's own stdout, the CPU comes from the tool's
signature, the timing from the run's log. Usage (after `tuner run ... > OUT 2> LOG`)::

    python -m bench.record_run --command 'tuner run --budget 60m' --stdout OUT --log LOG \\
        --started 2026-11-29T09:37:08Z --commit 760466d --output studies/dev-machine-2cores.md
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from tuner.signature import cpu_signature
from tuner.topology import physical_cores

DONE = re.compile(r"job done in (\d+) s(.*)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.record_run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--command", required=True)
    parser.add_argument("--stdout", required=True, type=Path)
    parser.add_argument("--log", required=True, type=Path)
    parser.add_argument("--started", required=True)
    parser.add_argument("--commit", required=True)
    parser.add_argument("--output", required=True, type=Path)
    args = parser.parse_args(argv)
    table = args.stdout.read_text(encoding="utf-8").rstrip()
    log = args.log.read_text(encoding="utf-8").splitlines()
    done = next((m for m in map(DONE.search, log) if m), None)
    if done is None:
        print(f"{args.log}: no 'job done' line: the run did not finish", file=sys.stderr)
        return 1
    signature = cpu_signature()
    plan = [line for line in log if "benchmark-confirmation:" in line or "verdict:" in line or "study " in line]
    finished = datetime.fromtimestamp(args.log.stat().st_mtime, UTC).isoformat(timespec="seconds")
    where = ", `.venv/bin/` on PATH" if args.command.startswith("tuner ") else ""  # else the command says its path
    text = f"""# `tuner run` on the development machine ({len(physical_cores())} cores)

- Command: `{args.command}` (from the repository root{where}), at commit `{args.commit}`
- Started {args.started}, log last written {finished}; the run reported: job done in {done.group(1)} s{done.group(2)}
- CPU: {signature.model_name} (vendor {signature.vendor}, family {signature.family} model {signature.model}
  stepping {signature.stepping}), {signature.physical_cores} physical cores, {signature.sockets} socket(s),
  SMT {signature.smt}, ISA {" ".join(signature.isa)}; signature id `{signature.id}`
- The machine is shared with other work (see the repository README on noise); figures are one run.

## What it printed (stdout, verbatim)

{table}

## How each study went (from its log)

```
{chr(10).join(plan)}
```
"""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
