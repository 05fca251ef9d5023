"""``report``: our scores next to the IRIS paper's, per game and aggregated (markdown, CSV, performance profile).

Per game: ours (mean ± std over the finished seeds) twice: the last ``EvalCallback`` evaluation at the budget
(``evaluations.npz``) and, when the suite has ``final_eval_episodes``, the final evaluation of the final model with
the IRIS protocol (``final_evaluation.json``; it sees the ``final_training_epochs`` that follow the last
collection, as the paper's score does, and is then the score of the HNS columns and the aggregates); the published
IRIS score (paper Table 1, with the std over its 5 seeds), random, human and the human-normalised scores (HNS).
Then the IQM, mean and median of the HNS with rliable's 95% stratified-bootstrap confidence intervals, for our
runs and for the published per-seed scores of the same games, the number of superhuman games (mean HNS >= 1) and
a performance-profile plot (fraction of runs with HNS above tau).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from sb3_iris.atari_scores import (
    ATARI_SCORES,
    IRIS_PAPER_SCORES,
    IRIS_PUBLISHED_RUNS,
    IRIS_SCORES_SOURCE,
    human_normalized_score,
)
from sb3_iris.suite import runs as suite_runs
from sb3_iris.suite.runs import SuiteConfig
from sb3_iris.suite.zoo_runs import AGGREGATES, interval_estimates, machine_description

__all__ = ["GameResult", "collect_results", "write_report"]

OURS = "sb3-iris"
PUBLISHED = "IRIS (published)"


@dataclass
class GameResult:
    """Scores of one game's finished runs by seed: ``scores`` (the primary ones, for the HNS and aggregates),
    ``budget_scores`` (last ``EvalCallback`` evaluation) and ``final_scores`` (final evaluation, if any)."""

    game: str
    scores: dict[int, float]
    final_steps: dict[int, int]
    n_runs: int
    budget_scores: dict[int, float]
    final_scores: dict[int, float]

    @property
    def values(self) -> np.ndarray:
        return np.array([self.scores[seed] for seed in sorted(self.scores)], dtype=float)

    @property
    def mean(self) -> float:
        return float(self.values.mean()) if self.scores else float("nan")

    @property
    def std(self) -> float:
        return float(self.values.std()) if self.scores else float("nan")


def collect_results(config: SuiteConfig, out: Path) -> list[GameResult]:
    """Per game, the scores of every finished run: the mean return of its last evaluation at the budget, and of
    its final evaluation when the suite makes one (then the primary score)."""
    results = []
    for game in config.games:
        budget_scores, final_scores, steps = {}, {}, {}
        for run in config.runs(out):
            if run.game != game:
                continue
            state = suite_runs.read_state(run)
            if state["state"] != "finished":
                continue
            timesteps, returns = suite_runs.stitched_evaluations(run, state)
            if len(timesteps):
                budget_scores[run.seed] = float(returns[-1].mean())
                steps[run.seed] = int(timesteps[-1])
            final = suite_runs.read_final_evaluation(run)
            if final is not None:
                final_scores[run.seed] = float(final["mean_return"])
        scores = final_scores if config.final_eval_episodes > 0 else budget_scores
        results.append(GameResult(game, scores, steps, len(config.seeds), budget_scores, final_scores))
    return results


def _mean_std(scores: dict[int, float], n_runs: int) -> str:
    if not scores:
        return f"n/a (0/{n_runs})"
    values = np.array(list(scores.values()))
    return f"{values.mean():.1f} ± {values.std():.1f} ({len(scores)}/{n_runs})"


def _hns_matrix(columns: list[np.ndarray], games: list[str]) -> Optional[np.ndarray]:
    """``(runs, games)`` HNS, keeping the first ``min(len)`` runs of each game (rliable needs a rectangle)."""
    n = min((len(c) for c in columns), default=0)
    if n == 0:
        return None
    return np.array(
        [[human_normalized_score(score, game) for score in column[:n]] for column, game in zip(columns, games)]
    ).T


def _fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _per_game(results: list[GameResult]) -> tuple[list[str], list[dict]]:
    lines = [
        "| game | ours, final evaluation | ours, last evaluation at the budget | IRIS published (5 seeds) | random "
        "| human | HNS ours | HNS published |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for result in results:
        reference = ATARI_SCORES[result.game]
        published = np.array(IRIS_PUBLISHED_RUNS[result.game])
        hns_ours = human_normalized_score(result.mean, result.game) if result.scores else float("nan")
        hns_published = human_normalized_score(IRIS_PAPER_SCORES[result.game], result.game)
        lines.append(
            f"| {result.game} | {_mean_std(result.final_scores, result.n_runs)} | "
            f"{_mean_std(result.budget_scores, result.n_runs)} | "
            f"{IRIS_PAPER_SCORES[result.game]:.1f} ± {published.std():.1f} | {reference.random:g} | "
            f"{reference.human:g} | {_fmt(hns_ours, 3)} | {hns_published:.3f} |"
        )
        rows.append(
            {
                "game": result.game,
                "ours_mean": result.mean,
                "ours_std": result.std,
                "ours_seeds_finished": len(result.scores),
                "ours_seeds_total": result.n_runs,
                "ours_scores": ";".join(f"{seed}:{score:.4f}" for seed, score in sorted(result.scores.items())),
                "ours_budget_scores": ";".join(f"{k}:{v:.4f}" for k, v in sorted(result.budget_scores.items())),
                "ours_final_scores": ";".join(f"{k}:{v:.4f}" for k, v in sorted(result.final_scores.items())),
                "ours_final_steps": ";".join(f"{seed}:{s}" for seed, s in sorted(result.final_steps.items())),
                "iris_published": IRIS_PAPER_SCORES[result.game],
                "iris_published_std": float(published.std()),
                "random": reference.random,
                "human": reference.human,
                "hns_ours": hns_ours,
                "hns_published": hns_published,
            }
        )
    return lines, rows


def _aggregates(results: list[GameResult], reps: int) -> tuple[list[str], list[dict], dict[str, np.ndarray]]:
    games = [r.game for r in results if r.scores]
    score_dict: dict[str, np.ndarray] = {}
    ours = _hns_matrix([r.values for r in results if r.scores], games)
    if ours is not None:
        score_dict[OURS] = ours
    if games:
        score_dict[PUBLISHED] = _hns_matrix([np.array(IRIS_PUBLISHED_RUNS[g]) for g in games], games)
    lines = [f"Over the {len(games)} game(s) with finished runs: {', '.join(games) or 'none'}.", ""]
    if ours is None or ours.size < 2:
        lines.append("Fewer than 2 finished runs: no bootstrap aggregate.")
        return lines, [], score_dict
    try:
        estimates, intervals = interval_estimates(score_dict, reps=reps)
    except ImportError:
        lines.append('rliable is not installed (pip install "sb3-iris[cluster]"): no aggregate.')
        return lines, [], score_dict
    lines += [
        f"HNS aggregates with 95% stratified-bootstrap CIs ({reps} replications, rliable):",
        "",
        "| agent | runs x games | IQM | mean | median | superhuman games |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name, scores in score_dict.items():
        superhuman = int((scores.mean(axis=0) >= 1.0).sum())
        cells = [
            f"{estimates[name][i]:.3f} [{intervals[name][0, i]:.3f}, {intervals[name][1, i]:.3f}]" for i in range(3)
        ]
        lines.append(f"| {name} | {scores.shape[0]} x {scores.shape[1]} | " + " | ".join(cells) + f" | {superhuman} |")
        row = {"agent": name, "runs": scores.shape[0], "games": scores.shape[1], "superhuman_games": superhuman}
        for i, key in enumerate(AGGREGATES):
            row.update(
                {
                    key: estimates[name][i],
                    f"{key}_ci_low": intervals[name][0, i],
                    f"{key}_ci_high": intervals[name][1, i],
                }
            )
        rows.append(row)
    return lines, rows, score_dict


def _performance_profile(score_dict: dict[str, np.ndarray], reps: int, path: Path) -> bool:
    """Plot the fraction of runs with HNS > tau (rliable), with its 95% CI band; False if nothing to plot."""
    try:
        from rliable import library as rly
    except ImportError:
        return False
    if OURS not in score_dict:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    highest = max(float(np.max(s)) for s in score_dict.values())
    taus = np.linspace(0.0, max(2.0, min(8.0, highest)), 81)
    profiles, cis = rly.create_performance_profile(score_dict, taus, reps=reps)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name in score_dict:
        (line,) = ax.plot(
            taus, profiles[name], label=f"{name} ({score_dict[name].shape[0]} x {score_dict[name].shape[1]})"
        )
        ax.fill_between(taus, cis[name][0], cis[name][1], color=line.get_color(), alpha=0.2)
    ax.axvline(1.0, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("human-normalised score τ")
    ax.set_ylabel("fraction of runs with score > τ")
    ax.set_title("Performance profile (95% CIs)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(out: Path, config: SuiteConfig, reps: int = 2000, folder: Optional[Path] = None) -> Path:
    """Write ``results.md``, ``results.csv`` (per game), ``aggregates.csv`` and ``performance_profile.png``.

    :param out: the suite folder
    :param config: its configuration
    :param reps: bootstrap replications
    :param folder: where to write (default ``<out>/report``)
    :return: the path of ``results.md``
    """
    folder = Path(folder or Path(out) / "report")
    folder.mkdir(parents=True, exist_ok=True)
    results = collect_results(config, out)
    table, game_rows = _per_game(results)
    aggregate_lines, aggregate_rows, score_dict = _aggregates(results, reps)
    plotted = _performance_profile(score_dict, reps, folder / "performance_profile.png")
    _write_csv(folder / "results.csv", game_rows)
    _write_csv(folder / "aggregates.csv", aggregate_rows)
    finished = sum(len(r.scores) for r in results)
    total = sum(r.n_runs for r in results)
    text = [
        "# Atari 100k suite: sb3-iris next to the IRIS paper",
        "",
        f"Runs: {finished} of {total} finished ({len(config.games)} games x {len(config.seeds)} seeds "
        f"{list(config.seeds)}), {config.budget} env steps each. Machine of the report: {machine_description()}.",
        "Ours, final evaluation: per seed, the mean return of "
        + (
            f"{config.final_eval_episodes} episodes of the final model with the IRIS protocol "
            "(`python -m sb3_iris.evaluate`: temperature 0.5, 1 no-op, no life-loss ends, 108 000-frame limit"
            + (f", episodes cut at {config.final_eval_max_steps} steps" if config.final_eval_max_steps else "")
            + "); the HNS columns and the aggregates use it. "
            if config.final_eval_episodes
            else "(not made: final_eval_episodes 0; the HNS columns and aggregates use the last evaluation). "
        )
        + f"Ours, last evaluation at the budget: RL Zoo's `EvalCallback` ({config.eval_episodes} episodes every "
        f"{config.eval_freq} env steps, actions sampled at temperature 1, IRIS evaluation settings), before the "
        "`final_training_epochs`. Runs not finished are left out. Published: " + IRIS_SCORES_SOURCE + ". Random "
        "and human: `sb3_iris.atari_scores` (the references of the IRIS paper). "
        "HNS = (score - random) / (human - random).",
        "",
        *table,
        "",
        "## Aggregates",
        "",
        *aggregate_lines,
        "",
    ]
    if plotted:
        text += ["![performance profile](performance_profile.png)", ""]
    if config.params or config.zoo_args:
        text += ["Run settings: `" + " ".join([*config.zoo_args, "-params", *config.params]) + "`", ""]
    (folder / "results.md").write_text("\n".join(text))
    return folder / "results.md"
