"""Where does a Breakout policy lose the ball, and does its world model know the miss was avoidable? Prints JSON.

    OMP_NUM_THREADS=1 python -m benchmarks.failure_point_probe \
        --model logs/probe_l13a/seed0/iris/MinAtar-Breakout-v1_1/MinAtar-Breakout-v1.zip --env MinAtar/Breakout-v1

Plays ``--episodes`` deterministic episodes of a saved IRIS model (loaded and its env rebuilt as
``sb3_iris.evaluate`` does) in MinAtar Breakout. For each episode that ends by a miss, it goes back ``k`` steps
(``--steps-before``) and compares two action sequences from that frame up to the miss:

- ``policy``: the actions the game executed (MinAtar's sticky actions included), which lost the ball;
- ``catcher``: a scripted plan that reaches the ball's landing column and then waits, computed from the game's
  own state (the ball's path does not depend on the paddle until it reaches the paddle's row) and checked in a
  copy of the game without sticky actions (``catcher_real_catch``: the fraction of plans that do keep the ball).

Each sequence is imagined from that one real frame (a one-frame context, as in imagination with ``burn_in: 0``),
with argmax tokens and with sampled ones, and the probe reports the fraction of imagined rollouts that end by the
miss step (``imagined_end``). A world model that supports learning past the policy's level ends the ``policy``
rollouts and keeps the ``catcher`` ones; if it ends both, it does not know the miss was avoidable and cannot teach
the actor to avoid it (the world model fails); if it keeps the ``catcher`` ones, the actor could have learned it in
imagination (the actor-critic fails). It also reports where the misses happen (bricks left, rewards so far, ball
direction, paddle distance from the ball's landing column).
"""

from __future__ import annotations

import argparse
import copy
import json
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from benchmarks.frozen_world_model_probe import (
    ball_mask,
    load_probe_model,
    paddle_columns,
    paddle_row,
    probe_dream_env,
)
from sb3_iris.envs import add_env_settings_arguments
from sb3_iris.evaluate import make_env
from sb3_iris.minatar import MinAtarImageWrapper, grid_to_image

NOOP, LEFT, RIGHT = 0, 1, 2  # the gym actions of MinAtar Breakout's minimal action set ('n', 'l', 'r')


def landing(game: Any, max_steps: int) -> tuple[int, int, int] | None:
    """Where the ball next reaches the paddle's row, from the breakout game state ``game`` (not changed).

    :return: ``(steps, ball_x, new_x)``: the ball tries to enter row 9 at the ``steps``-th act from now (1-based),
        from column ``ball_x`` towards ``new_x``; the paddle keeps the ball if it is at either column after that
        act's move; None if that does not happen within ``max_steps`` acts
    """
    sim = copy.deepcopy(game)
    for step in range(1, max_steps + 1):
        x, y, direction = sim.ball_x, sim.ball_y, sim.ball_dir
        new_x = int(np.clip(x + (1 if direction in (1, 2) else -1), 0, 9))  # the game clamps at the walls
        if y + (1 if direction in (2, 3) else -1) == 9:  # no brick is ever in row 9
            return step, x, new_x
        sim.pos = -100  # keep the paddle out of the way: only the ball's own path matters before it lands
        sim.act(0)
    return None


def catcher_plan(start_pos: int, steps: int, ball_x: int, new_x: int) -> list[int] | None:
    """Gym actions that put the paddle on ``ball_x`` or ``new_x`` after ``steps`` acts (moves first, then waits).

    :return: the actions, or None if neither column is within ``steps`` moves
    """
    target = min((ball_x, new_x), key=lambda column: abs(column - start_pos))
    distance = target - start_pos
    if abs(distance) > steps:
        return None
    move = RIGHT if distance > 0 else LEFT
    return [move] * abs(distance) + [NOOP] * (steps - abs(distance))


def real_outcome(game: Any, actions: list[int], action_set: list[int]) -> bool:
    """:return: True if the game (a copy, no sticky actions) is still running after ``actions``."""
    sim = copy.deepcopy(game)
    for action in actions:
        sim.act(action_set[action])
        if sim.terminal:
            return False
    return True


@torch.no_grad()
def imagined_ends(model: Any, frames: torch.Tensor, actions: torch.Tensor, temperature: float) -> np.ndarray:
    """Whether the world model ends each rollout by its last action, from one real frame each (ends drawn at the
    model's ``imagination_outcome_temperature``).

    :param frames: ``(B, 3, H, W)`` preprocessed start frames
    :param actions: ``(B, n)`` gym actions
    :return: ``(B,)`` bool
    """
    dream = probe_dream_env(model, temperature)
    dream.reset(model.policy.tokenizer.tokenize(frames))
    ended = torch.zeros(len(frames), dtype=torch.bool)
    for t in range(actions.shape[1]):
        step = dream.step(actions[:, t], predict_next_obs=t < actions.shape[1] - 1)
        ended |= step.ends.bool()
    return ended.numpy()


def object_positions(frames: torch.Tensor, row: int) -> np.ndarray:
    """``(B, 3)`` paddle column, ball column and ball row of Breakout frames ``(B, 3, H, W)`` (NaN: none)."""
    red = ball_mask(frames).float()
    found = red.flatten(1).any(1).numpy()
    count = red.sum((1, 2)).clamp(min=1)
    columns = (red.sum(1) * torch.arange(red.shape[-1])).sum(-1) / count
    rows = (red.sum(2) * torch.arange(red.shape[-2])).sum(-1) / count
    ball = np.where(found[:, None], torch.stack([columns, rows], 1).numpy(), np.nan)
    return np.concatenate([paddle_columns(frames, row)[:, None], ball], 1)


def same_positions(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(B,)`` True where the rows of two :func:`object_positions` results agree (NaN equal to NaN)."""
    return ((a == b) | (np.isnan(a) & np.isnan(b))).all(1)


def real_frames(model: Any, game: Any, actions: list[int], action_set: list[int], draw: Any) -> torch.Tensor:
    """``(n, 3, H, W)`` preprocessed real frames after each of ``actions`` in a copy of ``game`` (no sticky actions)."""
    sim = copy.deepcopy(game)
    frames = []
    for action in actions:
        sim.act(action_set[action])
        image = torch.as_tensor(draw(sim.state())).permute(2, 0, 1).unsqueeze(0)
        frames.append(model.policy.tokenizer.preprocess(image)[0])
    return torch.stack(frames)


@torch.no_grad()
def catcher_divergence(
    model: Any, rows: list[dict[str, Any]], action_set: list[int], draw: Any, row: int
) -> dict[str, Any]:
    """Where the catcher's imagined rollouts (argmax tokens) leave the real game, step by step.

    At each step the imagined frame is compared with the tokenizer's reconstruction of the real frame after the
    same actions (what a perfect world model would draw), by paddle column and ball position. An imagined end with
    every frame right until then is the end head's error; one after a wrong frame follows an observation error.

    :return: counts over the rows whose catcher plan keeps the ball in the real game
    """
    usable = [item for item in rows if item["catcher"] is not None and item["catcher_real_catch"]]
    if not usable:
        return {}
    tokenizer = model.policy.tokenizer
    frames = torch.stack([item["frame"] for item in usable])
    actions = torch.as_tensor([item["catcher"] for item in usable], dtype=torch.long)
    real = torch.stack([real_frames(model, item["game"], item["catcher"], action_set, draw) for item in usable])
    n, steps = actions.shape
    truth = object_positions(tokenizer.reconstruct(real.flatten(0, 1)), row).reshape(n, steps, 3)
    tokenizer_right = same_positions(object_positions(real.flatten(0, 1), row), truth.reshape(n * steps, 3))
    dream = probe_dream_env(model, 0.0)
    dream.reset(tokenizer.tokenize(frames))
    end_step = np.full(n, -1)
    first_wrong = np.full(n, -1)
    for t in range(steps):
        step = dream.step(actions[:, t], predict_next_obs=t < steps - 1)
        ends = step.ends.bool().numpy()
        end_step[(end_step < 0) & ends] = t
        if t < steps - 1:
            drawn = object_positions(tokenizer.decode_tokens(dream.obs_tokens), row)
            wrong = ~same_positions(drawn, truth[:, t])
            first_wrong[(first_wrong < 0) & (end_step < 0) & wrong] = t
    ended = end_step >= 0
    frames_right_until_end = ended & ((first_wrong < 0) | (first_wrong >= end_step))
    return dict(
        rollouts=int(n),
        ended=int(ended.sum()),
        ended_with_frames_right=int(frames_right_until_end.sum()),
        ended_after_a_wrong_frame=int((ended & ~frames_right_until_end).sum()),
        kept_with_a_wrong_frame=int((~ended & (first_wrong >= 0)).sum()),
        first_wrong_step=[int(value) for value in first_wrong],
        end_step=[int(value) for value in end_step],
        tokenizer_positions_right=round(float(tokenizer_right.mean()), 3),
    )


def image_drawer(env: DummyVecEnv) -> Any:
    """The function that draws a MinAtar grid as the env's frames do (its :class:`MinAtarImageWrapper`)."""
    wrapper = env.envs[0]
    while not isinstance(wrapper, MinAtarImageWrapper):
        if not hasattr(wrapper, "env"):
            raise ValueError("failure_point_probe needs an env wrapped in sb3_iris.minatar.MinAtarImageWrapper")
        wrapper = wrapper.env
    return lambda grid: grid_to_image(np.asarray(grid), wrapper.cell_size, wrapper.image_size)


def play_episodes(model: Any, env: DummyVecEnv, episodes: int) -> list[dict[str, Any]]:
    """Deterministic episodes: per step the preprocessed frame, the game state before it, the executed action."""
    inner = env.envs[0].unwrapped
    action_set = [int(a) for a in inner.action_set]
    played = []
    obs = env.reset()
    for _ in range(episodes):
        frames, states, executed, rewards = [], [], [], 0.0
        while True:
            frames.append(model.policy.tokenizer.preprocess(torch.as_tensor(obs[0]).permute(2, 0, 1).unsqueeze(0))[0])
            states.append(copy.deepcopy(inner.game.env))
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, info = env.step(action)
            executed.append(action_set.index(int(inner.game.last_action)))
            rewards += float(reward[0])
            if done[0]:
                truncated = bool(info[0].get("TimeLimit.truncated", False))
                played.append(dict(frames=frames, states=states, actions=executed, ret=rewards, missed=not truncated))
                break
    return played


def failure_rows(played: list[dict[str, Any]], k: int, action_set: list[int]) -> list[dict[str, Any]]:
    """For each missed episode: the start ``k`` steps before the miss, and the two action sequences from it."""
    rows = []
    for episode in played:
        if not episode["missed"] or len(episode["actions"]) <= k:
            continue
        miss = len(episode["actions"]) - 1  # index of the act that lost the ball
        start = miss - k
        game = episode["states"][start]
        found = landing(game, k + 1)
        if found is None or found[0] != k + 1:
            continue  # the ball reaches the paddle's row earlier (a catch in between): not this miss's approach
        steps, ball_x, new_x = found
        plan = catcher_plan(game.pos, steps, ball_x, new_x)
        rows.append(
            dict(
                frame=episode["frames"][start],
                game=game,
                policy=episode["actions"][start : miss + 1],
                catcher=plan,
                catcher_real_catch=None if plan is None else real_outcome(game, plan, action_set),
                bricks_left=int(episode["states"][miss].brick_map.sum()),
                return_before_miss=episode["ret"],
                ball_direction=int(episode["states"][miss].ball_dir),
                paddle_distance=int(min(abs(game.pos - ball_x), abs(game.pos - new_x))),
                miss_distance=int(
                    min(abs(episode["states"][miss].pos - ball_x), abs(episode["states"][miss].pos - new_x))
                ),
            )
        )
    return rows


def summarise(model: Any, rows: list[dict[str, Any]], temperatures: tuple[float, ...]) -> dict[str, Any]:
    """Imagined end rates of the two sequences over the rows whose catcher plan exists and keeps the ball."""
    usable = [row for row in rows if row["catcher"] is not None and row["catcher_real_catch"]]
    result: dict[str, Any] = dict(
        misses=len(rows),
        catcher_found=sum(row["catcher"] is not None for row in rows),
        catcher_real_catch=sum(bool(row["catcher_real_catch"]) for row in rows),
    )
    if not usable:
        return result
    frames = torch.stack([row["frame"] for row in usable])
    for name in ("policy", "catcher"):
        actions = torch.as_tensor([row[name] for row in usable], dtype=torch.long)
        for temperature in temperatures:
            ended = imagined_ends(model, frames, actions, temperature)
            result[f"imagined_end_{name}_temperature_{temperature}"] = round(float(ended.mean()), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--env-module", action="append", default=["sb3_iris.minatar"])
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--steps-before", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    add_env_settings_arguments(parser)
    args = parser.parse_args()
    model, settings = load_probe_model(args)
    env = DummyVecEnv(
        [lambda: Monitor(make_env(args.env, seed=args.seed, env_modules=args.env_module, settings=settings))]
    )
    action_set = [int(a) for a in env.envs[0].unwrapped.action_set]
    draw = image_drawer(env)
    row = paddle_row(env.observation_space.shape[0])  # frames (H, W, 3)
    env.seed(args.seed)  # MinAtar's game (its sticky actions) draws from the first reset's seed
    played = play_episodes(model, env, args.episodes)
    record: dict[str, Any] = dict(
        model=args.model,
        episodes=args.episodes,
        returns=[episode["ret"] for episode in played],
        missed=sum(episode["missed"] for episode in played),
        by_steps_before={},
    )
    for k in args.steps_before:
        rows = failure_rows(played, k, action_set)
        summary = summarise(model, rows, (0.0, 1.0))
        summary["catcher_divergence"] = catcher_divergence(model, rows, action_set, draw, row)
        summary["where"] = [
            {
                key: row[key]
                for key in ("bricks_left", "return_before_miss", "ball_direction", "paddle_distance", "miss_distance")
            }
            for row in rows
        ]
        record["by_steps_before"][str(k)] = summary
        shown = {key: value for key, value in summary.items() if key != "where"}
        shown["catcher_divergence"] = {
            key: value for key, value in summary["catcher_divergence"].items() if not key.endswith("_step")
        }
        print(json.dumps({k: shown}), flush=True)
    if args.out:
        with open(args.out, "w") as file:
            json.dump(record, file, indent=1)


if __name__ == "__main__":
    main()
