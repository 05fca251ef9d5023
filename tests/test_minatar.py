"""MinAtar support: Gymnasium registration, the image wrapper, and IRIS's CnnPolicy on the wrapped env."""

from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

from sb3_iris import IRIS
from sb3_iris.minatar import GRID_SIZE, PALETTE, MinAtarImageWrapper, grid_to_image, register_minatar_envs
from tests.conftest import tiny_iris_kwargs

REPO_ROOT = Path(__file__).resolve().parents[1]
BREAKOUT = "MinAtar/Breakout-v1"


def test_import_registers_the_minatar_ids_once():
    assert BREAKOUT in gym.envs.registry
    assert "MinAtar/SpaceInvaders-v0" in gym.envs.registry
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second registration would warn "Overriding environment"
        register_minatar_envs()


def test_wrapper_shape_dtype_and_colours_on_breakout():
    env = MinAtarImageWrapper(gym.make(BREAKOUT))
    assert env.observation_space == gym.spaces.Box(0, 255, shape=(32, 32, 3), dtype=np.uint8)
    assert env.action_space.n == 3  # minimal action set: no-op, left, right
    obs, _ = env.reset(seed=0)
    grid = env.unwrapped.game.state()
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    # The 30x30 drawing is centred: a one-pixel black border.
    assert not obs[0].any() and not obs[-1].any() and not obs[:, 0].any() and not obs[:, -1].any()
    paddle_column = int(np.flatnonzero(grid[9, :, 0])[0])
    block = obs[1 + 27 : 1 + 30, 1 + 3 * paddle_column : 1 + 3 * paddle_column + 3]
    assert (block == PALETTE[0]).all()  # paddle: white, bottom row
    brick_only = np.argwhere(grid[..., 3] & ~grid[..., :3].any(axis=-1))
    row, column = brick_only[0]
    assert (obs[1 + 3 * row, 1 + 3 * column] == PALETTE[3]).all()
    for _ in range(5):
        obs, *_ = env.step(env.action_space.sample())
        assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8


def test_grid_to_image_blocks_overlaps_and_padding():
    grid = np.zeros((GRID_SIZE, GRID_SIZE, 4), dtype=bool)
    grid[2, 5, 1] = True
    grid[7, 0, 1] = grid[7, 0, 3] = True  # two channels in one cell: the mean colour
    image = grid_to_image(grid, cell_size=2, image_size=24)
    assert image.shape == (24, 24, 3) and image.dtype == np.uint8
    offset = 2  # (24 - 20) // 2
    assert (image[offset + 4 : offset + 6, offset + 10 : offset + 12] == PALETTE[1]).all()
    expected = np.rint((PALETTE[1].astype(float) + PALETTE[3]) / 2)
    assert (image[offset + 14 : offset + 16, offset : offset + 2] == expected).all()
    assert image.reshape(-1, 3).any(axis=1).sum() == 2 * 4  # two cells of 2x2 pixels, the rest black


def test_wrapper_rejects_other_observation_spaces():
    with pytest.raises(ValueError, match=r"env.observation_space must be a bool Box of shape \(10, 10, C\)"):
        MinAtarImageWrapper(gym.make("CartPole-v1"))
    with pytest.raises(ValueError, match="image_size=20 must be an integer >= 10 \\* cell_size = 30"):
        MinAtarImageWrapper(gym.make(BREAKOUT), image_size=20)
    with pytest.raises(ValueError, match="cell_size=0"):
        MinAtarImageWrapper(gym.make(BREAKOUT), cell_size=0)


def _yml_entry() -> dict:
    entry = dict(yaml.safe_load((REPO_ROOT / "hyperparams" / "iris.yml").read_text())[BREAKOUT])
    entry["policy_kwargs"] = eval(entry["policy_kwargs"])  # as RL Zoo does
    return entry


def test_yml_entry_builds_a_16_token_iris():
    entry = _yml_entry()
    ((wrapper, wrapper_kwargs),) = entry["env_wrapper"][0].items()
    assert wrapper == "sb3_iris.minatar.MinAtarImageWrapper"
    kwargs = {k: v for k, v in entry.items() if k not in ("n_timesteps", "policy", "env_wrapper", "n_envs", "callback")}
    env = MinAtarImageWrapper(gym.make(BREAKOUT), **wrapper_kwargs)
    model = IRIS(entry["policy"], env, device="cpu", **kwargs)
    assert model.policy.tokenizer.tokens_per_obs == 16
    assert model.imagination_horizon <= model.policy.world_model.config.max_blocks
    assert model.policy.world_model.config.parallel_observations


def test_one_minatar_entry_serves_every_game():
    entries = yaml.safe_load((REPO_ROOT / "hyperparams" / "iris.yml").read_text())
    games = [key for key in entries if key.startswith("MinAtar/")]
    assert len(games) == 5
    for game in games:
        assert entries[game] == entries[BREAKOUT], f"the {game} entry differs from the {BREAKOUT} entry"
    for algo in ("ppo", "dqn"):
        baselines = yaml.safe_load((REPO_ROOT / "hyperparams" / "baselines" / f"{algo}.yml").read_text())
        assert {key for key in baselines if key.startswith("MinAtar/")} == set(games)
        assert all(baselines[game] == baselines[BREAKOUT] for game in games)


def test_tiny_iris_cnn_policy_trains_on_wrapped_breakout():
    env = MinAtarImageWrapper(gym.make(BREAKOUT))
    kwargs = tiny_iris_kwargs(image=True, n_steps_per_epoch=100, seed=0)
    kwargs["policy_kwargs"] = dict(
        tokenizer_kwargs=dict(
            base_channels=8,
            channel_multipliers=(1, 1, 1, 1),  # 32x32 -> 4x4 tokens
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        ),
        world_model_kwargs=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=4),
        actor_critic_kwargs=dict(conv_channels=(8, 8, 8), lstm_dim=32),
    )
    model = IRIS("CnnPolicy", env, **kwargs)
    model.learn(300)
    assert model.num_timesteps == 300
    obs, _ = env.reset(seed=1)
    action, state = model.predict(obs, deterministic=True)
    assert env.action_space.contains(int(action)) and state is not None
