"""The runs of a suite: their configuration, folders, RL Zoo commands, checkpoints, states and evaluations.

Layout of a suite folder (``--out``)::

    suite.json                       the SuiteConfig (written by ``run``; ``status`` and ``report`` read it)
    suite.lock                       held by the ``run`` driver while it runs
    runs/<Game>/seed<k>/state.json   the run's state and its attempts (command, checkpoint resumed from, exit code)
    runs/<Game>/seed<k>/attempt<n>.log   stdout + stderr of attempt n
    runs/<Game>/seed<k>/zoo/iris/<EnvId>_<n>/   RL Zoo's folder of attempt n (-f runs/<Game>/seed<k>/zoo):
        rl_model_<steps>_steps.zip, rl_model_replay_buffer_<steps>_steps.pkl, evaluations.npz, <EnvId>.zip, ...
    report/                          written by ``report``

Nothing here imports Ray: this module is what the Ray tasks, ``status`` and ``report`` share.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sb3_iris.atari_scores import ATARI_100K_GAMES, atari_game_name
from sb3_iris.suite.zoo_runs import read_evaluations

__all__ = [
    "RESERVED_ZOO_FLAGS",
    "Checkpoint",
    "RunSpec",
    "SuiteConfig",
    "build_command",
    "checkpoints",
    "evaluation_command",
    "final_steps",
    "logged_steps",
    "parse_evaluation",
    "read_final_evaluation",
    "read_state",
    "resume_checkpoint",
    "stitched_evaluations",
    "trained_model",
    "write_json",
]

#: rl_zoo3.train flags the suite sets itself (``--zoo-args`` may not contain them).
RESERVED_ZOO_FLAGS = frozenset(
    {
        "--algo", "--env", "--seed", "-n", "--n-timesteps", "--save-freq", "--save-replay-buffer", "-i",
        "--trained-agent", "-f", "--log-folder", "--device", "--num-threads", "--eval-freq", "--eval-episodes",
        "-params", "--hyperparams", "-optimize", "--optimize-hyperparameters",
    }
)  # fmt: skip

#: Run states. ``interrupted``: stopped from outside (Ctrl-C, SIGTERM, a lost driver); resumed by the next ``run``.
STATES = ("pending", "queued", "running", "finished", "failed", "interrupted")

_STEPS_PATTERN = re.compile(r"\|\s+total_timesteps\s+\|\s+(\d+)\s+\|")
_CHECKPOINT_PATTERN = re.compile(r"rl_model_(\d+)_steps\.zip")
# Errors that mean the checkpoint's files are damaged (a process killed while writing them).
_DAMAGED_CHECKPOINT_PATTERN = re.compile(r"BadZipFile|UnpicklingError|pickle data was truncated|EOFError|Error")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON atomically (a reader never sees a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SuiteConfig:
    """What a suite trains: every (game, seed) pair with the same budget, RL Zoo arguments and hyperparameters.

    :param games: game names of the Atari 100k benchmark (``"Pong"``) or their env ids (``"PongNoFrameskip-v4"``)
    :param seeds: training seeds
    :param budget: env steps per run (``-n``)
    :param save_freq: env steps between checkpoints (``--save-freq``; the replay buffer is saved with each)
    :param eval_freq: env steps between evaluations (``--eval-freq``)
    :param eval_episodes: episodes per evaluation (``--eval-episodes``)
    :param params: IRIS hyperparameters on top of the yml entry (``-params key:value ...``)
    :param zoo_args: other rl_zoo3.train arguments (e.g. ``--conf-file my.yml``), not those the suite sets
    :param env_suffix: env id of a game = name + suffix
    :param final_eval_episodes: episodes of the final evaluation of the final model with the IRIS protocol
        (``python -m sb3_iris.evaluate``: temperature 0.5, IRIS Atari evaluation settings); 0 skips it
    :param final_eval_max_steps: agent steps after which a final-evaluation episode is cut (0: no cut)
    """

    games: tuple[str, ...] = ATARI_100K_GAMES
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    budget: int = 100_000
    save_freq: int = 10_000
    eval_freq: int = 20_000
    eval_episodes: int = 10
    params: tuple[str, ...] = ()
    zoo_args: tuple[str, ...] = ()
    env_suffix: str = "NoFrameskip-v4"
    final_eval_episodes: int = 100
    final_eval_max_steps: int = 0

    def __post_init__(self) -> None:
        games = []
        for game in self.games:
            name = atari_game_name(str(game))
            if name is None:
                raise ValueError(
                    f"games: {game!r} is not one of the 26 Atari 100k games ({', '.join(ATARI_100K_GAMES)})"
                )
            games.append(name)
        if not games or len(set(games)) != len(games):
            raise ValueError(f"games must be a non-empty list without repeats, got {list(self.games)}")
        object.__setattr__(self, "games", tuple(games))
        seeds = tuple(int(seed) for seed in self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {list(self.seeds)}")
        object.__setattr__(self, "seeds", seeds)
        for name in ("budget", "save_freq", "eval_freq", "eval_episodes"):
            _positive_int(name, getattr(self, name))
        for name in ("final_eval_episodes", "final_eval_max_steps"):
            if getattr(self, name) != 0:
                _positive_int(name, getattr(self, name))
        if self.save_freq >= self.budget:
            raise ValueError(
                f"save_freq must be below budget ({self.budget}) so that a run has a checkpoint to resume from, "
                f"got {self.save_freq}"
            )
        for item in self.params:
            if ":" not in item:
                raise ValueError(f"params: {item!r} is not KEY:VALUE (as rl_zoo3's -params takes)")
        object.__setattr__(self, "params", tuple(self.params))
        object.__setattr__(self, "zoo_args", tuple(self.zoo_args))
        reserved = sorted(RESERVED_ZOO_FLAGS.intersection(self.zoo_args))
        if reserved:
            raise ValueError(
                f"zoo_args: {reserved} are set by the suite (games, seeds, budget, save/eval frequencies, "
                "devices; hyperparameters go through params)"
            )

    def env_id(self, game: str) -> str:
        return f"{game}{self.env_suffix}"

    def runs(self, out: Path) -> list[RunSpec]:
        """Every (game, seed) run of the suite, game-major."""
        return [RunSpec(game, seed, self.env_id(game), Path(out)) for game in self.games for seed in self.seeds]

    def to_json(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SuiteConfig:
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})

    def run_settings(self) -> dict[str, Any]:
        """The settings that define what a run is; a suite folder cannot be reused with other ones."""
        data = self.to_json()
        del data["games"], data["seeds"]
        return data


@dataclass(frozen=True)
class Checkpoint:
    """A model checkpoint written by RL Zoo's ``CheckpointCallback`` and the replay buffer saved with it."""

    steps: int
    model: Path
    replay_buffer: Path


@dataclass
class RunSpec:
    """One (game, seed) run and where its files are."""

    game: str
    seed: int
    env_id: str
    out: Path
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.out) / "runs" / self.game / f"seed{self.seed}"

    @property
    def name(self) -> str:
        return f"{self.game} seed {self.seed}"

    @property
    def zoo_folder(self) -> Path:
        """RL Zoo's log folder (``-f``)."""
        return self.folder / "zoo"

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    @property
    def final_evaluation_path(self) -> Path:
        """The final evaluation's summary (``python -m sb3_iris.evaluate --json``)."""
        return self.folder / "final_evaluation.json"

    def attempt_log(self, number: int) -> Path:
        return self.folder / f"attempt{number}.log"

    def attempt_folders(self) -> dict[int, Path]:
        """RL Zoo's folder of each attempt so far: ``zoo/iris/<EnvId>_<n>`` by ``n``."""
        folders = {}
        for path in (self.zoo_folder / "iris").glob(f"{self.env_id}_*"):
            suffix = path.name[len(self.env_id) + 1 :]
            if path.is_dir() and suffix.isdigit():
                folders[int(suffix)] = path
        return dict(sorted(folders.items()))

    def next_attempt_folder(self) -> Path:
        """The folder RL Zoo will create for the next attempt (its run id = the latest + 1)."""
        numbers = list(self.attempt_folders())
        return self.zoo_folder / "iris" / f"{self.env_id}_{(max(numbers) if numbers else 0) + 1}"


def read_state(run: RunSpec) -> dict[str, Any]:
    """The run's ``state.json``, or a pending state if it has none."""
    if run.state_path.is_file():
        return json.loads(run.state_path.read_text())
    return {"game": run.game, "seed": run.seed, "env_id": run.env_id, "state": "pending", "attempts": []}


def update_state(run: RunSpec, current: dict[str, Any], /, **changes: Any) -> dict[str, Any]:
    """Apply ``changes`` (e.g. ``state="running"``) to ``current``, stamp the time and write ``state.json``."""
    state = {**current, **changes, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if state["state"] not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state['state']!r}")
    write_json(run.state_path, state)
    return state


def checkpoints(run: RunSpec) -> list[Checkpoint]:
    """Checkpoints of all attempts that have their replay buffer, by env steps (the latest attempt wins ties)."""
    found: dict[int, Checkpoint] = {}
    for folder in run.attempt_folders().values():
        for model in folder.glob("rl_model_*_steps.zip"):
            match = _CHECKPOINT_PATTERN.fullmatch(model.name)
            if match is None:
                continue
            steps = int(match.group(1))
            replay = folder / f"rl_model_replay_buffer_{steps}_steps.pkl"
            if replay.is_file():
                found[steps] = Checkpoint(steps, model, replay)
    return [found[steps] for steps in sorted(found)]


def resume_checkpoint(run: RunSpec, budget: int, damaged: frozenset[str] = frozenset()) -> Optional[Checkpoint]:
    """The checkpoint a new attempt starts from: the latest one below ``budget`` not known to be damaged.

    A checkpoint at the budget itself is never resumed from: ``-n 0`` would mean RL Zoo's default budget.

    :param run: the run
    :param budget: env steps of the run
    :param damaged: model paths of checkpoints that failed to load
    """
    usable = [c for c in checkpoints(run) if c.steps < budget and str(c.model) not in damaged]
    return usable[-1] if usable else None


def model_steps(path: Path) -> Optional[int]:
    """``num_timesteps`` of an SB3 model file (read from its ``data`` entry, without loading the networks)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return int(json.loads(archive.read("data"))["num_timesteps"])
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def final_steps(run: RunSpec, folder: Path) -> Optional[int]:
    """Env steps of the final model RL Zoo saved in an attempt folder (``<EnvId>.zip``), None if there is none."""
    path = folder / f"{run.env_id}.zip"
    return model_steps(path) if path.is_file() else None


def trained_model(run: RunSpec, budget: int) -> Optional[Path]:
    """A final model of the run at the budget, saved by any attempt (None if training is not done)."""
    for folder in reversed(run.attempt_folders().values()):
        steps = final_steps(run, folder)
        if steps is not None and steps >= budget:
            return folder / f"{run.env_id}.zip"
    return None


def evaluation_command(config: SuiteConfig, run: RunSpec, python: str, model: Path, device: str) -> list[str]:
    """The final evaluation of a trained model with the IRIS protocol (``python -m sb3_iris.evaluate --json``)."""
    command = [python, "-m", "sb3_iris.evaluate", str(model), "--env", run.env_id]
    command += ["--episodes", str(config.final_eval_episodes), "--seed", str(run.seed), "--device", device, "--json"]
    if config.final_eval_max_steps:
        command += ["--max-episode-steps", str(config.final_eval_max_steps)]
    return command


def parse_evaluation(output: Path) -> Optional[dict[str, Any]]:
    """The JSON summary ``sb3_iris.evaluate --json`` printed (its last line), None if there is none."""
    if not output.is_file():
        return None
    for line in reversed(output.read_text().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def read_final_evaluation(run: RunSpec) -> Optional[dict[str, Any]]:
    """The run's final evaluation summary, None if it has none."""
    path = run.final_evaluation_path
    return json.loads(path.read_text()) if path.is_file() else None


def logged_steps(log: Path) -> Optional[int]:
    """The last ``time/total_timesteps`` SB3 printed in an attempt's log (None if none yet)."""
    if not log.is_file():
        return None
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 200_000))
        matches = _STEPS_PATTERN.findall(f.read().decode(errors="replace"))
    return int(matches[-1]) if matches else None


def log_tail(log: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log (for errors in ``status``)."""
    if not log.is_file():
        return ""
    with open(log, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 20_000))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])


def damaged_checkpoint(attempt: dict[str, Any], log: Path) -> Optional[str]:
    """The checkpoint an attempt resumed from, if the attempt failed loading it (damaged files)."""
    resumed = attempt.get("resumed_from")
    if not resumed or attempt.get("returncode") == 0:
        return None
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    # The hook prints "Continuing the step counter" once the checkpoint loaded and training starts.
    loading_failed = "Loading pretrained agent" in text and "Continuing the step counter" not in text
    return resumed if loading_failed and _DAMAGED_CHECKPOINT_PATTERN.search(text) else None


def build_command(
    config: SuiteConfig,
    run: RunSpec,
    entry_point: list[str],
    resume: Optional[Checkpoint],
    device: str,
    num_threads: int,
) -> list[str]:
    """The rl_zoo3.train command of one attempt: from scratch, or ``-i <checkpoint>`` for the remaining steps.

    :param config: the suite
    :param run: the run
    :param entry_point: interpreter and module (:func:`sb3_iris.suite.zoo_runs.zoo_entry_point`)
    :param resume: the checkpoint to continue from (None: from scratch)
    :param device: torch device (``cpu``, ``cuda``)
    :param num_threads: torch threads (``--num-threads``)
    """
    steps = config.budget - (resume.steps if resume is not None else 0)
    command = [
        *entry_point,
        "--algo", "iris",
        "--env", run.env_id,
        "--seed", str(run.seed),
        "-n", str(steps),
        "--save-freq", str(config.save_freq),
        "--save-replay-buffer",
        "--eval-freq", str(config.eval_freq),
        "--eval-episodes", str(config.eval_episodes),
        "--device", device,
        "--num-threads", str(num_threads),
        "-f", str(run.zoo_folder),
    ]  # fmt: skip
    if resume is not None:
        command += ["-i", str(resume.model)]
    command += list(config.zoo_args)
    if config.params:
        command += ["-params", *config.params]
    return command


def display_command(command: list[str]) -> str:
    """A command as a user types it (``python`` for the interpreter)."""
    return shlex.join(["python", *command[1:]] if command else [])


def stitched_evaluations(run: RunSpec, state: Optional[dict[str, Any]] = None) -> tuple[np.ndarray, np.ndarray]:
    """The run's evaluations over all its attempts, as one uninterrupted run would have them.

    Attempt ``k`` resumed from the checkpoint at ``s_k`` env steps (``s_1 = 0``); from its ``evaluations.npz`` the
    evaluations after ``s_k`` and up to ``s_{k+1}`` are kept (those after ``s_{k+1}`` were made by networks that the
    next attempt did not continue from).

    :return: timesteps ``(n,)`` and returns ``(n, episodes)``; empty arrays if there is no evaluation yet
    """
    state = read_state(run) if state is None else state
    attempts = [a for a in state.get("attempts", []) if a.get("zoo_folder")]
    starts = [int(a.get("resumed_from_steps") or 0) for a in attempts]
    timesteps: list[np.ndarray] = []
    returns: list[np.ndarray] = []
    for index, attempt in enumerate(attempts):
        path = Path(attempt["zoo_folder"]) / "evaluations.npz"
        if not path.is_file():
            continue
        steps, episode_returns = read_evaluations(path)
        end = starts[index + 1] if index + 1 < len(attempts) else np.inf
        keep = (steps > starts[index]) & (steps <= end)
        timesteps.append(steps[keep])
        returns.append(episode_returns[keep])
    if not timesteps or sum(len(t) for t in timesteps) == 0:
        return np.zeros(0, dtype=int), np.zeros((0, 0))
    widths = {r.shape[1] for r in returns if len(r)}
    if len(widths) > 1:
        raise ValueError(f"{run.name}: attempts evaluated different numbers of episodes {sorted(widths)}")
    return np.concatenate(timesteps), np.concatenate([r for r in returns if len(r)])
