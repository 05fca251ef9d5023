"""Per-epoch training metrics from an RL Zoo / SB3 stdout log of IRIS (the ``| key | value |`` tables), as CSV.

``benchmarks/sample_efficiency.py`` keeps each run's output in ``<log-dir>/<env>/<algo>/seed<seed>/train.log``;
this turns its logger tables (one per epoch) and the ``Eval num_timesteps=...`` lines into one CSV row per epoch::

    python benchmarks/training_log_metrics.py logs/.../train.log --out metrics.csv
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

ROW = re.compile(r"^\|\s+(\S+)\s+\|\s+(\S+)\s+\|")
EVAL = re.compile(r"^Eval num_timesteps=(\d+), episode_reward=([-\d.]+)")
SECTION = re.compile(r"^\|\s+(\S+)/\s+\|")


def parse_log(path: Path) -> list[dict[str, str]]:
    """One dict per logger table that has ``time/epochs`` (section-qualified keys), with the latest evaluation.

    :param path: the log file
    """
    rows: list[dict[str, str]] = []
    table: dict[str, str] = {}
    section = ""
    last_eval: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        evaluation = EVAL.match(line)
        if evaluation:
            last_eval = {"eval_timesteps": evaluation.group(1), "eval_mean_return": evaluation.group(2)}
            continue
        header = SECTION.match(line)
        if header:
            section = header.group(1)
            continue
        row = ROW.match(line)
        if row:
            table[f"{section}/{row.group(1)}"] = row.group(2)
        elif line.startswith("---") and table:
            if "time/epochs" in table:
                rows.append({**table, **last_eval})
            table = {}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("log", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="CSV file (default: standard output)")
    args = parser.parse_args()
    rows = parse_log(args.log)
    if not rows:
        raise SystemExit(f"no per-epoch logger tables with time/epochs in {args.log}")
    keys = sorted({key for row in rows for key in row})
    keys.remove("time/epochs")
    fieldnames = ["time/epochs", *keys]
    if args.out is None:
        write_rows(sys.stdout, fieldnames, rows)
        return
    with open(args.out, "w", newline="") as file:
        write_rows(file, fieldnames, rows)


def write_rows(file, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
    """Write ``rows`` as CSV with a header to an open text file."""
    writer = csv.DictWriter(file, fieldnames=fieldnames)
    writer.writeheader()
    writer.writerows(rows)


if __name__ == "__main__":
    main()
