"""The epoch schedule of one ``learn(total_timesteps)`` call: how many epochs, and which part trains in which.

``learn(n)`` collects ``n`` transitions in epochs of ``n_steps_per_epoch`` and trains after each, then runs
``final_training_epochs`` training-only epochs. That last value is a number of epochs (an ``int``) or a fraction of
the call's collecting epochs (a ``float``): the published ``0.2`` gives the paper's 500 + 100 epochs at 100k steps,
and 2 + 0 epochs for ``learn(256)``, so that the cost of ``learn(n)`` grows in proportion to ``n``.
A part (tokenizer, world model, actor-critic) trains in epoch ``e`` (counted over the model's life) when
``e > <part>_start_after_epochs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np

__all__ = [
    "PARTS",
    "EpochPlan",
    "check_final_training_epochs",
    "final_epochs",
    "minimum_timesteps",
    "plan_epochs",
    "unreachable_message",
]

PARTS = ("tokenizer", "world_model", "actor_critic")


def check_final_training_epochs(value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 0 (epochs) or a finite float >= 0 (a fraction)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(
            f"final_training_epochs={value!r} must be an int >= 0 (a number of epochs) or a float >= 0 (a fraction "
            "of the collecting epochs of each learn() call, e.g. 0.2 as published)"
        )
    if not math.isfinite(float(value)) or value < 0:
        raise ValueError(f"final_training_epochs={value!r} must be >= 0 (an int: epochs; a float: a fraction)")


def final_epochs(final_training_epochs: Union[int, float], collecting_epochs: int) -> int:
    """Training-only epochs after ``collecting_epochs``: the int itself, or the float times them, rounded half up.

    :param final_training_epochs: an int (epochs) or a float (fraction of the collecting epochs)
    :param collecting_epochs: epochs collected in this ``learn()`` call
    """
    if isinstance(final_training_epochs, (float, np.floating)):
        return int(math.floor(float(final_training_epochs) * collecting_epochs + 0.5))
    return int(final_training_epochs)


@dataclass(frozen=True)
class EpochPlan:
    """The epochs of one ``learn()`` call and the gradient updates each part gets in them.

    :param total_timesteps: transitions this call collects
    :param steps_per_epoch: transitions per collecting epoch (``n_steps_per_epoch`` rounded up to ``n_envs``)
    :param first_epoch: epochs the model ran before this call
    :param collecting_epochs: epochs that collect then train
    :param final_epochs: training-only epochs after them
    :param start_after: per part, the epoch after which it trains (``<part>_start_after_epochs``)
    :param updates_per_epoch: per part, gradient updates in each epoch where it trains
    :param stop_after: per part, the last epoch in which it trains (None: no end; ``tokenizer_stop_after_epochs``)
    """

    total_timesteps: int
    steps_per_epoch: int
    first_epoch: int
    collecting_epochs: int
    final_epochs: int
    start_after: dict[str, int]
    updates_per_epoch: dict[str, int]
    stop_after: dict[str, Optional[int]] = field(default_factory=dict)

    @property
    def total_epochs(self) -> int:
        return self.collecting_epochs + self.final_epochs

    @property
    def last_epoch(self) -> int:
        return self.first_epoch + self.total_epochs

    def training_epochs(self, part: str, after_epoch: int = -1) -> int:
        """Epochs of this call in which ``part`` trains, counting only epochs after ``after_epoch``."""
        first = max(self.first_epoch, self.start_after[part], after_epoch) + 1
        stop = self.stop_after.get(part)
        last = self.last_epoch if stop is None else min(self.last_epoch, stop)
        return max(0, last - first + 1)

    def updates(self, part: str, after_epoch: int = -1) -> int:
        """Gradient updates of ``part`` in this call (only in epochs after ``after_epoch``)."""
        return self.training_epochs(part, after_epoch) * self.updates_per_epoch[part]

    def unreachable_parts(self) -> list[str]:
        """Parts with updates per epoch that this call's epochs never reach (their warm-up is longer).

        A part whose training has ended (``stop_after``) before this call, or is set to end before it starts, is not
        unreachable: it is done.
        """
        return [
            p for p in PARTS if self.updates_per_epoch[p] > 0 and self.training_epochs(p) == 0 and not self._ended(p)
        ]

    def _ended(self, part: str) -> bool:
        stop = self.stop_after.get(part)
        return stop is not None and stop <= max(self.first_epoch, self.start_after[part])


def plan_epochs(
    total_timesteps: int,
    steps_per_epoch: int,
    first_epoch: int,
    final_training_epochs: Union[int, float],
    start_after: dict[str, int],
    updates_per_epoch: dict[str, int],
    stop_after: Optional[dict[str, Optional[int]]] = None,
) -> EpochPlan:
    """The :class:`EpochPlan` of collecting ``total_timesteps`` transitions (a callback may stop it earlier).

    :param total_timesteps: transitions to collect in this call
    :param steps_per_epoch: transitions per collecting epoch (summed over envs)
    :param first_epoch: epochs the model ran before this call
    :param final_training_epochs: an int (epochs) or a float (fraction of the collecting epochs)
    :param start_after: per part, ``<part>_start_after_epochs``
    :param updates_per_epoch: per part, ``<part>_updates_per_epoch``
    :param stop_after: per part, the last epoch in which it trains (None or missing: no end)
    """
    collecting = max(0, -(-int(total_timesteps) // int(steps_per_epoch)))
    return EpochPlan(
        total_timesteps=int(total_timesteps),
        steps_per_epoch=int(steps_per_epoch),
        first_epoch=int(first_epoch),
        collecting_epochs=collecting,
        final_epochs=final_epochs(final_training_epochs, collecting) if collecting else 0,
        start_after={p: int(start_after[p]) for p in PARTS},
        updates_per_epoch={p: int(updates_per_epoch[p]) for p in PARTS},
        stop_after={p: None if v is None else int(v) for p, v in (stop_after or {}).items()},
    )


def minimum_timesteps(plan: EpochPlan, final_training_epochs: Union[int, float], part: str) -> int:
    """The smallest ``total_timesteps`` whose call (from the same first epoch) trains ``part`` at least once."""
    needed = plan.start_after[part] + 1 - plan.first_epoch  # epochs this call must run
    if isinstance(final_training_epochs, (float, np.floating)):
        # collecting + round(fraction * collecting) is non-decreasing in collecting: start just below the
        # real-valued solution and step up (a few iterations, also for warm-ups of 10**9 epochs).
        estimate = int((needed - 0.5) / (1.0 + float(final_training_epochs))) - 1
        collecting = max(estimate, 1)
        while collecting + final_epochs(final_training_epochs, collecting) < needed:
            collecting += 1
    else:
        collecting = max(needed - int(final_training_epochs), 1)
    return collecting * plan.steps_per_epoch


def unreachable_message(plan: EpochPlan, final_training_epochs: Union[int, float]) -> str:
    """The warning for a call whose epochs never reach some parts' training (names the values)."""
    parts = plan.unreachable_parts()
    epochs = f"epochs {plan.first_epoch + 1}-{plan.last_epoch}" if plan.total_epochs else "no epochs"
    starts = ", ".join(f"{p}_start_after_epochs={plan.start_after[p]}" for p in parts)
    needed = max(minimum_timesteps(plan, final_training_epochs, p) for p in parts)
    return (
        f"learn(total_timesteps={plan.total_timesteps}) runs {plan.collecting_epochs} collecting epochs of "
        f"{plan.steps_per_epoch} steps and {plan.final_epochs} training-only epochs (final_training_epochs="
        f"{final_training_epochs!r}), {epochs}; {', '.join(parts)} never train{'s' if len(parts) == 1 else ''} in "
        f"them ({starts}: a part trains from epoch start_after + 1). Collect at least {needed} steps, or lower the "
        "warm-ups."
    )
