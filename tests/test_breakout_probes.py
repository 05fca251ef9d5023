"""The Breakout diagnostics' own parts: object positions in frames, the real frames after a plan, the catcher."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("minatar")

from benchmarks.failure_point_probe import object_positions, same_positions  # noqa: E402
from benchmarks.frozen_world_model_probe import paddle_row  # noqa: E402
from benchmarks.probes.guided_collection_probe import catcher_action  # noqa: E402
from sb3_iris.minatar import grid_to_image  # noqa: E402


def preprocess(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, H, W, 3)`` -> ``(B, 3, H, W)`` in [-1, 1], as ``ConvTokenizer.preprocess`` maps them."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def breakout_game(seed: int = 0):
    """The inner game of MinAtar Breakout (no sticky actions when driven through ``act``) and its action set."""
    env = gym.make("MinAtar/Breakout-v1")
    env.reset(seed=seed)
    return env.unwrapped.game.env, [int(a) for a in env.unwrapped.action_set]


@pytest.mark.parametrize("image_size", [10, 12, 16])
def test_object_positions_read_the_game_state(image_size: int) -> None:
    game, action_set = breakout_game()
    offset = (image_size - 10) // 2
    frames, expected = [], []
    for step in range(30):
        grid = game.state()
        frames.append(grid_to_image(grid, cell_size=1, image_size=image_size))
        # A ball that shares its cell with a brick or the trail is drawn in a mixed colour: not found as the ball.
        ball = [np.nan, np.nan] if grid[game.ball_y, game.ball_x].sum() > 1 else [game.ball_x, game.ball_y]
        expected.append([game.pos + offset, ball[0] + offset, ball[1] + offset])
        game.act(action_set[step % 3])
        if game.terminal:
            break
    found = object_positions(preprocess(np.stack(frames)), paddle_row(image_size))
    assert np.isnan(np.array(expected)).any() and not np.isnan(np.array(expected)).all()  # both kinds occur
    np.testing.assert_array_equal(found, np.array(expected, dtype=float))


def test_same_positions_treats_missing_objects_as_equal() -> None:
    a = np.array([[4.0, np.nan, np.nan], [4.0, 2.0, 3.0], [4.0, 2.0, 3.0]])
    b = np.array([[4.0, np.nan, np.nan], [4.0, 2.0, 3.0], [5.0, 2.0, 3.0]])
    np.testing.assert_array_equal(same_positions(a, b), [True, True, False])


def test_catcher_keeps_the_ball_for_a_thousand_steps() -> None:
    for seed in range(3):
        game, action_set = breakout_game(seed)
        reward = 0.0
        for _ in range(1000):
            step_reward, terminal = game.act(action_set[catcher_action(game)])
            reward += step_reward
            assert not terminal
        assert reward > 10


def test_oracle_replay_starts_restore_the_stored_game() -> None:
    """A rollout restarted from a replay step is in that step's game: its frame, and the same next frame as the game
    that was stored, for the same action (sticky actions off)."""
    from stable_baselines3.common.env_util import make_vec_env

    from benchmarks.oracle_actor_critic import GameStateReplay, collect, minatar_games, restore_starts
    from sb3_iris.minatar import MinAtarImageWrapper
    from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig

    def wrapper(env: gym.Env) -> gym.Env:
        return MinAtarImageWrapper(env, cell_size=1, image_size=10)

    kwargs = dict(n_envs=3, wrapper_class=wrapper, env_kwargs=dict(sticky_action_prob=0.0))
    collect_env = make_vec_env("MinAtar/Breakout-v1", seed=0, **kwargs)
    env = make_vec_env("MinAtar/Breakout-v1", seed=1, **kwargs)
    actor_critic = ActorCritic(
        ActorCriticConfig(num_actions=3, observation_shape=(3, 10, 10), flatten_images=True, recurrent=False)
    )
    replay = GameStateReplay()
    collect(actor_critic, collect_env, collect_env.reset(), 40, 1.0, replay)
    assert len(replay) == 120
    frames = restore_starts(env, replay, np.random.default_rng(0))
    for frame, game in zip(frames, minatar_games(env)):
        np.testing.assert_array_equal(grid_to_image(game.state(), cell_size=1, image_size=10), frame)
    index = 57
    stored, last_action = replay.states[index]
    expected = copy.deepcopy(stored)
    expected.act(1)
    game = minatar_games(env)[0]
    game.env, game.last_action = copy.deepcopy(stored), last_action
    game.act(1)
    np.testing.assert_array_equal(game.state(), expected.state())
