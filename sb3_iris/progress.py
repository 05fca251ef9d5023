"""Progress of ``IRIS.learn()``: the schedule line, epoch and phase progress, and an estimate of the time left.

At ``verbose >= 1`` IRIS writes, through the model's SB3 logger (``Logger.log``: its human-readable outputs, stdout
and ``log.txt`` where configured), one line with the schedule before training (epochs, updates per part, network
sizes), one line per epoch, and the progress of any training phase that runs longer than ``print_seconds``. At
``verbose=0`` SB3's logger has no stdout output and nothing is written. ``progress_bar=True`` shows a tqdm bar over
the epochs instead of SB3's bar over env steps (in IRIS the time goes into the training epochs, not into the env
steps). The module also records the per-epoch values of the SB3 logs (``train/...``, ``time/...``, ``rollout/...``).

The time left is the remaining gradient updates of each part times that part's latest seconds per update, plus the
remaining collecting epochs times the latest collection time. A part that has not trained yet has no cost measured:
the estimate is then a lower bound, and says which parts it leaves out.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import Any, Optional

from stable_baselines3.common.logger import HumanOutputFormat, Logger
from stable_baselines3.common.utils import safe_mean

from sb3_iris.schedule import PARTS, EpochPlan, plan_epochs, unreachable_message

__all__ = [
    "TrainingProgress",
    "estimate_seconds_left",
    "format_seconds",
    "network_summary",
    "record_epoch",
    "record_run_statistics",
    "schedule_line",
    "start_progress",
]

PART_NAMES = {"tokenizer": "tokenizer", "world_model": "world model", "actor_critic": "actor-critic"}


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``2h07m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _millions(module: Any) -> str:
    return f"{sum(p.numel() for p in module.parameters()) / 1e6:.2f}M"


def network_summary(policy: Any) -> str:
    """Sizes of the three networks, e.g. ``tokenizer ConvTokenizer 4.03M, world model 10 layers x 256 8.45M, ...``."""
    tokenizer, world_model, actor_critic = policy.tokenizer, policy.world_model, policy.actor_critic
    config = world_model.config
    core = "LSTM" if getattr(actor_critic.config, "recurrent", True) else "feed-forward"
    return (
        f"tokenizer {type(tokenizer).__name__} {_millions(tokenizer)} ({tokenizer.tokens_per_obs} tokens of "
        f"{tokenizer.vocab_size}), world model {config.num_layers} layers x {config.embed_dim} "
        f"{_millions(world_model)}, "
        f"actor-critic {core} {actor_critic.config.lstm_dim} {_millions(actor_critic)}"
    )


def schedule_line(plan: EpochPlan, networks: str, preset: Optional[str] = None) -> str:
    """The one line written before training: epochs, updates per part, network sizes."""
    parts = []
    for part in PARTS:
        updates = plan.updates(part)
        start = max(plan.first_epoch, plan.start_after[part]) + 1
        when = f"from epoch {start}" if updates else "never in this call"
        parts.append(f"{PART_NAMES[part]} {plan.updates_per_epoch[part]}/epoch {when} ({updates:,})")
    label = f" (preset {preset})" if preset else ""
    return (
        f"IRIS learn({plan.total_timesteps:,}){label}: {plan.collecting_epochs} collecting epochs of "
        f"{plan.steps_per_epoch} steps + {plan.final_epochs} training-only epochs; updates: {', '.join(parts)}; "
        f"networks: {networks}"
    )


def estimate_seconds_left(
    plan: EpochPlan,
    epochs_done: int,
    seconds_per_update: dict[str, float],
    collection_seconds: Optional[float],
    current: Optional[tuple[int, str, int]] = None,
) -> tuple[float, list[str]]:
    """Seconds left in a ``learn()`` call, and the parts left out because their cost is not measured yet.

    :param plan: the call's schedule
    :param epochs_done: epochs of this call finished so far
    :param seconds_per_update: the latest measured seconds per gradient update of each part that trained
    :param collection_seconds: the latest collection time of one epoch (None: not measured yet)
    :param current: ``(epoch, part, updates_done)`` of the phase running now, if any
    """
    last_finished = plan.first_epoch + epochs_done
    seconds, untimed = 0.0, []
    for part in PARTS:
        remaining = plan.updates(part, after_epoch=last_finished)
        if current is not None and current[1] == part:
            remaining -= current[2]
        elif current is not None and PARTS.index(part) < PARTS.index(current[1]):
            remaining -= plan.updates(part, after_epoch=current[0] - 1) - plan.updates(part, after_epoch=current[0])
        if remaining <= 0:
            continue
        if part in seconds_per_update:
            seconds += remaining * seconds_per_update[part]
        else:
            untimed.append(part)
    collecting_left = max(0, plan.collecting_epochs - epochs_done - (1 if current is not None else 0))
    if collecting_left and collection_seconds is not None:
        seconds += collecting_left * collection_seconds
    return seconds, untimed


class TrainingProgress:
    """Reports the progress of one ``learn()`` call (see the module docstring).

    :param plan: the call's schedule
    :param verbose: the model's verbosity; lines are written at >= 1
    :param progress_bar: show a tqdm bar over the epochs
    :param print_seconds: print a running phase's progress this often (seconds)
    :param logger: the SB3 logger the lines go to (``Logger.log``; None: a logger writing to stdout)
    """

    def __init__(
        self, plan: EpochPlan, verbose: int, progress_bar: bool, print_seconds: float, logger: Optional[Logger] = None
    ) -> None:
        self.plan = plan
        self.verbose = verbose
        self.print_seconds = print_seconds
        self.logger = logger if logger is not None else Logger(None, [HumanOutputFormat(sys.stdout)])
        self.start = time.perf_counter()
        self.epochs_done = 0
        self.seconds_per_update: dict[str, float] = {}
        self.collection_seconds: Optional[float] = None
        self._phase: Optional[str] = None
        self._phase_start = self._last_print = self.start
        self.bar = _make_bar(plan) if progress_bar else None

    # -- estimates ----------------------------------------------------------------------------------

    def seconds_left(self, current: Optional[tuple[int, str, int]] = None) -> tuple[float, list[str]]:
        return estimate_seconds_left(
            self.plan, self.epochs_done, self.seconds_per_update, self.collection_seconds, current
        )

    def left_text(self, current: Optional[tuple[int, str, int]] = None) -> str:
        seconds, untimed = self.seconds_left(current)
        if not untimed:
            return f"~{format_seconds(seconds)} left"
        names = ", ".join(PART_NAMES[p] for p in untimed)
        return f"> {format_seconds(seconds)} left (+ {names}: not timed yet)"

    # -- events -------------------------------------------------------------------------------------

    def _print(self, line: str) -> None:
        if self.bar is None:
            self.logger.log(line)
        else:
            with self.bar.external_write_mode():  # clears the bar for the line, then redraws it
                self.logger.log(line)

    def announce(self, line: str) -> None:
        """Write the schedule line (verbose >= 1)."""
        self.note(line)

    def note(self, line: str, verbose: int = 1) -> None:
        """Write a line to the logger at this verbosity and above (clearing the bar for it when one is shown).

        :param line: the text
        :param verbose: the lowest verbosity that shows it
        """
        if self.verbose >= verbose:
            self._print(line)

    def phase_update(self, epoch: int, phase: str, done: int, total: int) -> None:
        """A training phase is at update ``done`` of ``total`` (called before each update)."""
        now = time.perf_counter()
        if phase != self._phase:
            self._phase, self._phase_start, self._last_print = phase, now, now
        if self.bar is not None:
            self._update_bar(epoch, phase, done, total)
        if self.verbose < 1 or done == 0 or now - self._last_print < self.print_seconds:
            return
        self._last_print = now
        elapsed = now - self._phase_start
        phase_left = elapsed / done * (total - done)
        self._print(
            f"IRIS epoch {self._epoch_label(epoch)} {phase}: {done}/{total} updates, {format_seconds(elapsed)} "
            f"elapsed, ~{format_seconds(phase_left)} left in the phase; run: {self.left_text((epoch, phase, done))}"
        )

    def epoch_end(self, epoch: int, phase_seconds: dict[str, float], collection_seconds: Optional[float]) -> None:
        """Epoch ``epoch`` finished; ``phase_seconds`` are its training times per part."""
        self.epochs_done += 1
        self._phase = None
        for part, seconds in phase_seconds.items():
            updates = self.plan.updates_per_epoch.get(part, 0)
            if updates:
                self.seconds_per_update[part] = seconds / updates
        if collection_seconds is not None:
            self.collection_seconds = collection_seconds
        if self.bar is not None:
            self.bar.set_postfix_str(self.left_text(), refresh=False)
            self.bar.update(self.epochs_done - self.bar.n)
        if self.verbose >= 1:
            times = ", ".join(f"{p} {format_seconds(s)}" for p, s in phase_seconds.items()) or "no training"
            collect = "" if collection_seconds is None else f"collection {format_seconds(collection_seconds)}, "
            self._print(
                f"IRIS epoch {self._epoch_label(epoch)} done: {collect}{times}; "
                f"{format_seconds(time.perf_counter() - self.start)} elapsed, {self.left_text()}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # -- helpers ------------------------------------------------------------------------------------

    def _epoch_label(self, epoch: int) -> str:
        return f"{epoch - self.plan.first_epoch}/{self.plan.total_epochs}"

    def _update_bar(self, epoch: int, phase: str, done: int, total: int) -> None:
        assert self.bar is not None
        fraction = done / total if total else 0.0
        self.bar.set_description_str(f"IRIS epoch {self._epoch_label(epoch)} {phase} {done}/{total}", refresh=False)
        self.bar.set_postfix_str(self.left_text((epoch, phase, done)), refresh=False)
        # update() redraws at most every mininterval seconds.
        self.bar.update(max(0.0, self.epochs_done + fraction * 0.99 - self.bar.n))


def start_progress(
    model: Any, timesteps: int, steps_per_epoch: int, progress_bar: bool, print_seconds: float
) -> TrainingProgress:
    """The progress of a ``learn()`` call: its plan; a warning if a part never trains in it; the schedule line.

    :param model: the IRIS model (its schedule arguments, epochs so far, networks and logger)
    :param timesteps: env steps the call collects
    :param steps_per_epoch: env steps per collecting epoch (summed over envs)
    :param progress_bar: show a tqdm bar over the epochs
    :param print_seconds: write a running phase's progress this often (seconds)
    """
    plan = plan_epochs(
        timesteps,
        steps_per_epoch,
        model._n_epochs,
        model.final_training_epochs,
        start_after={p: getattr(model, f"{p}_start_after_epochs") for p in PARTS},
        updates_per_epoch={p: getattr(model, f"{p}_updates_per_epoch") for p in PARTS},
        stop_after={p: getattr(model, f"{p}_stop_after_epochs", None) for p in PARTS},
    )
    if plan.unreachable_parts():
        # stacklevel: this function, learn(), the caller of learn().
        warnings.warn(unreachable_message(plan, model.final_training_epochs), UserWarning, stacklevel=3)
    # learn() configures the logger (SB3's _setup_learn) before this; a model that never learnt has none yet.
    logger = getattr(model, "_logger", None)
    progress = TrainingProgress(plan, model.verbose, progress_bar, print_seconds, logger)
    progress.announce(schedule_line(plan, network_summary(model.policy), getattr(model, "preset", None)))
    return progress


def record_epoch(
    logger: Logger,
    metrics: dict[str, float],
    phase_seconds: dict[str, float],
    n_updates: int,
    epoch: int,
    learning_rate: float,
) -> None:
    """Record an epoch's training values: the phases' metrics, their times, the update and epoch counts, the rate."""
    for key, value in metrics.items():
        logger.record(key, value)
    for name, seconds in phase_seconds.items():
        logger.record(f"time/{name}_seconds", seconds)
    logger.record("train/n_updates", n_updates)
    logger.record("train/epoch", epoch)
    logger.record("train/learning_rate", learning_rate)


def record_run_statistics(model: Any) -> None:
    """Record the rollout and time statistics of ``model``'s ``learn()`` call (before each dump of the logs)."""
    logger = model.logger
    elapsed = max((time.time_ns() - model.start_time) / 1e9, sys.float_info.epsilon)
    fps = int((model.num_timesteps - model._num_timesteps_at_start) / elapsed)
    logger.record("time/epochs", model._n_epochs, exclude="tensorboard")
    if model.ep_info_buffer is not None and len(model.ep_info_buffer) > 0:
        logger.record("rollout/ep_rew_mean", safe_mean([info["r"] for info in model.ep_info_buffer]))
        logger.record("rollout/ep_len_mean", safe_mean([info["l"] for info in model.ep_info_buffer]))
    logger.record("rollout/replay_steps", model.replay_buffer.n_steps)
    logger.record("time/fps", fps)
    logger.record("time/time_elapsed", int(elapsed), exclude="tensorboard")
    logger.record("time/total_timesteps", model.num_timesteps, exclude="tensorboard")


def _make_bar(plan: EpochPlan) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError as error:
        raise ImportError(
            "progress_bar=True needs tqdm (pip install tqdm, or the [tests]/[zoo] extras of sb3-iris)"
        ) from error
    return tqdm(
        total=plan.total_epochs,
        desc="IRIS",
        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.2f}/{total} epochs [{elapsed}{postfix}]",  # postfix: ", ..."
        mininterval=0.5,
    )
