"""``status``: per run its state, env steps done, last evaluation, attempts and where its logs are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sb3_iris.suite import runs as suite_runs
from sb3_iris.suite.runs import RunSpec, SuiteConfig

__all__ = ["run_status", "status_rows", "format_status"]


def run_status(run: RunSpec, config: SuiteConfig, driver_alive: bool) -> dict[str, Any]:
    """One run's status row.

    :param run: the run
    :param config: its suite
    :param driver_alive: whether a ``run`` driver holds the suite's lock (else ``running`` / ``queued`` are stale)
    """
    state = suite_runs.read_state(run)
    attempts = state.get("attempts", [])
    label = state["state"]
    if label in ("running", "queued") and not driver_alive:
        label = "interrupted"  # its driver is gone (killed, node lost): the next `run` resumes it
    steps = state.get("steps_done") or 0
    log = attempts[-1]["log"] if attempts else None
    if label == "running" and log:
        steps = max(steps, suite_runs.logged_steps(Path(log)) or 0)
    timesteps, returns = suite_runs.stitched_evaluations(run, state)
    checkpoint = suite_runs.resume_checkpoint(run, config.budget + 1)
    return {
        "game": run.game,
        "seed": run.seed,
        "state": label,
        "steps": int(steps),
        "budget": config.budget,
        "last_eval_step": int(timesteps[-1]) if len(timesteps) else None,
        "last_eval_return": float(returns[-1].mean()) if len(timesteps) else None,
        "attempts": len(attempts),
        "resumed_from": attempts[-1].get("resumed_from") if attempts else None,
        "latest_checkpoint": str(checkpoint.model) if checkpoint else None,
        "log": log,
        "error": state.get("error") if label == "failed" else None,
    }


def status_rows(out: Path) -> tuple[SuiteConfig, list[dict[str, Any]]]:
    """The suite's configuration and one status row per run."""
    from sb3_iris.suite.scheduler import SuiteLock

    config = load_config(out)
    alive = SuiteLock.held(out)
    return config, [run_status(run, config, alive) for run in config.runs(out)]


def load_config(out: Path) -> SuiteConfig:
    """The ``suite.json`` of a suite folder.

    :raises FileNotFoundError: if ``out`` has none (no ``run`` was started there)
    """
    import json

    path = Path(out) / "suite.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out} is not a suite folder (no suite.json): start one with `run --out {out}`")
    return SuiteConfig.from_json(json.loads(path.read_text()))


def format_status(rows: list[dict[str, Any]]) -> str:
    """A text table of the rows, then the errors of failed runs."""
    header = ("game", "seed", "state", "env steps", "last evaluation", "attempts", "log")
    lines = [header]
    for row in rows:
        evaluation = (
            f"{row['last_eval_return']:.1f} @ {row['last_eval_step']}" if row["last_eval_step"] is not None else "-"
        )
        lines.append(
            (
                row["game"],
                str(row["seed"]),
                row["state"],
                f"{row['steps']}/{row['budget']}",
                evaluation,
                str(row["attempts"]),
                row["log"] or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    text.append("")
    text.append(", ".join(f"{count} {state}" for state, count in sorted(counts.items())))
    for row in rows:
        if row["error"]:
            text += ["", f"{row['game']} seed {row['seed']} failed: {row['error']}"]
    return "\n".join(text)
