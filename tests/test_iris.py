"""IRIS as an SB3 algorithm: end to end runs, logging, seeding, predict with LSTM state, env wrapping, n_envs."""

from __future__ import annotations

import csv
import inspect
import math
import re

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import DOCUMENTED_LOG_KEYS, ColorBoxEnv, recording_logger, tiny_iris_kwargs
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv, VecTransposeImage

from sb3_iris import IRIS, CnnPolicy, MlpPolicy


def _state_dict_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------------------


def test_mlp_cartpole_end_to_end_logs_documented_keys():
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(150)

    assert isinstance(model.policy, MlpPolicy)
    assert model.num_timesteps == 150
    assert model._n_epochs == 3
    # Every phase trains from epoch 1: (2 + 2 + 2) updates per epoch.
    assert model._n_updates == 3 * 6
    assert model.replay_buffer.n_steps == 150
    assert len(writer.records) == 3  # log_interval=1: one dump per epoch
    missing = set(DOCUMENTED_LOG_KEYS) - writer.keys
    assert not missing, f"documented log keys not logged: {sorted(missing)}"
    last = writer.records[-1]
    assert last["train/n_updates"] == model._n_updates
    assert last["_step"] == model.num_timesteps
    for key in DOCUMENTED_LOG_KEYS:
        assert math.isfinite(float(last[key])), key
    assert 0.0 < last["train/codebook_usage"] <= 1.0


def test_cnn_64x64_end_to_end_logs_documented_keys():
    env = ColorBoxEnv(size=64)
    model = IRIS("CnnPolicy", env, seed=0, **tiny_iris_kwargs(image=True, resolution=64))
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(100)

    assert isinstance(model.policy, CnnPolicy)
    assert model.policy.observation_space.shape == (3, 64, 64)
    assert model.policy.tokenizer.tokens_per_obs == 16  # 64 / 2**4 = 4 -> 4x4 tokens
    assert model.num_timesteps == 100
    missing = set(DOCUMENTED_LOG_KEYS) - writer.keys
    assert not missing, f"documented log keys not logged: {sorted(missing)}"
    assert math.isfinite(writer.records[-1]["train/world_model_loss"])


def test_log_interval_and_csv_progress(tmp_path):
    """``configure(folder, ["csv"])`` gets one row per ``log_interval`` epochs with the documented columns."""
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(200, log_interval=2)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # 4 epochs, dumped every 2
    assert set(DOCUMENTED_LOG_KEYS) <= set(rows[0])
    assert int(float(rows[-1]["time/total_timesteps"])) == 200


def test_tensorboard_log(tmp_path):
    model = IRIS("MlpPolicy", "CartPole-v1", tensorboard_log=str(tmp_path), **tiny_iris_kwargs(image=False))
    model.learn(50, tb_log_name="tiny")
    runs = list(tmp_path.glob("tiny_*"))
    assert len(runs) == 1
    assert list(runs[0].glob("events.out.tfevents.*"))


def test_phase_warm_up_schedule():
    """With start_after_epochs 0/1/2 the tokenizer trains from epoch 1, the world model from 2, the actor-critic
    from 3 (the ``final_training_epochs`` run after collection and keep counting)."""
    kwargs = tiny_iris_kwargs(
        image=False, world_model_start_after_epochs=1, actor_critic_start_after_epochs=2, final_training_epochs=1
    )
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(100)
    assert model.num_timesteps == 100
    assert model._n_epochs == 3
    per_epoch = [record["train/n_updates"] for record in writer.records]
    assert per_epoch == [2, 2 + 4, 2 + 4 + 6]
    assert "train/world_model_loss" not in writer.records[0]
    assert "train/actor_critic_loss" not in writer.records[1]
    assert "train/actor_critic_loss" in writer.records[2]


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------


def _trained(seed: int) -> IRIS:
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=seed, **tiny_iris_kwargs(image=True))
    return model.learn(100)


def test_same_seed_same_results():
    a, b = _trained(3), _trained(3)
    params_a, params_b = a.get_parameters(), b.get_parameters()
    assert params_a.keys() == params_b.keys()
    assert _state_dict_equal(params_a["policy"], params_b["policy"])

    observations = np.random.default_rng(0).integers(0, 256, size=(6, 16, 16, 3), dtype=np.uint8)
    actions_a, state_a = a.predict(observations, deterministic=True)
    actions_b, state_b = b.predict(observations, deterministic=True)
    np.testing.assert_array_equal(actions_a, actions_b)
    np.testing.assert_array_equal(state_a[0], state_b[0])
    np.testing.assert_array_equal(state_a[1], state_b[1])
    torch.manual_seed(7)
    sampled_a, _ = a.predict(observations, deterministic=False)
    torch.manual_seed(7)
    sampled_b, _ = b.predict(observations, deterministic=False)
    np.testing.assert_array_equal(sampled_a, sampled_b)

    # The data collected is the same too.
    start, end = a.replay_buffer.time_range
    times = np.arange(start, end)
    envs = np.zeros_like(times)
    np.testing.assert_array_equal(
        a.replay_buffer.observations_at(envs, times), b.replay_buffer.observations_at(envs, times)
    )

    # ... and a different seed gives different parameters (so the comparison above means something).
    c = _trained(4)
    assert not _state_dict_equal(params_a["policy"], c.get_parameters()["policy"])


# --------------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cartpole_model() -> IRIS:
    return IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))


def test_predict_single_and_batch(cartpole_model):
    model = cartpole_model
    lstm_dim = model.policy.actor_critic.config.lstm_dim
    space = model.observation_space
    obs = space.sample()
    action, state = model.predict(obs)
    assert np.shape(action) == ()
    assert model.action_space.contains(int(action))
    assert state[0].shape == state[1].shape == (1, 1, lstm_dim)

    batch = np.stack([space.sample() for _ in range(5)])
    actions, state = model.predict(batch, deterministic=True)
    assert actions.shape == (5,)
    assert all(model.action_space.contains(int(a)) for a in actions)
    assert state[0].shape == state[1].shape == (1, 5, lstm_dim)


def test_predict_state_and_episode_start(cartpole_model):
    model = cartpole_model
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 4)).astype(np.float32)

    fresh_actions, state1 = model.predict(obs, deterministic=True)
    assert not np.allclose(state1[0], 0.0)
    _, state2 = model.predict(obs, state=state1, episode_start=np.array([False, False]), deterministic=True)
    assert not np.allclose(state2[0], state1[0])
    assert not np.allclose(state2[1], state1[1])

    # episode_start resets the state: same output as from a fresh (zero) state.
    reset_actions, reset_state = model.predict(
        obs, state=state2, episode_start=np.array([True, True]), deterministic=True
    )
    np.testing.assert_array_equal(reset_actions, fresh_actions)
    np.testing.assert_allclose(reset_state[0], state1[0])
    np.testing.assert_allclose(reset_state[1], state1[1])

    # Only the env that starts an episode is reset.
    _, partial = model.predict(obs, state=state2, episode_start=np.array([True, False]), deterministic=True)
    _, continued = model.predict(obs, state=state2, episode_start=np.array([False, False]), deterministic=True)
    np.testing.assert_allclose(partial[0][:, 0], state1[0][:, 0])
    np.testing.assert_allclose(partial[0][:, 1], continued[0][:, 1])

    # The state that goes in is not modified.
    copy = (state2[0].copy(), state2[1].copy())
    model.predict(obs, state=state2, episode_start=np.array([False, False]))
    np.testing.assert_array_equal(copy[0], state2[0])


def test_predict_with_zero_state_equals_no_state(cartpole_model):
    obs = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    zeros = np.zeros((1, 3, cartpole_model.policy.actor_critic.config.lstm_dim), dtype=np.float32)
    a, s = cartpole_model.predict(obs, deterministic=True)
    b, t = cartpole_model.predict(obs, state=(zeros, zeros.copy()), episode_start=np.zeros(3), deterministic=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(s[0], t[0])


# --------------------------------------------------------------------------------------------------
# Env wrapping
# --------------------------------------------------------------------------------------------------


def test_auto_wraps_raw_env_and_env_id():
    from_env = IRIS("MlpPolicy", gym.make("CartPole-v1"), **tiny_iris_kwargs(image=False))
    from_id = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    for model in (from_env, from_id):
        assert isinstance(model.env, VecEnv)
        assert model.n_envs == 1
        assert model.observation_space.shape == (4,)
    from_id.learn(50)
    assert from_id.num_timesteps == 50


def test_images_are_transposed_and_predict_accepts_hwc():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True))
    assert isinstance(model.env, VecTransposeImage)
    assert model.observation_space.shape == (3, 16, 16)
    assert model.policy.observation_space.shape == (3, 16, 16)

    hwc = np.random.default_rng(0).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    chw = hwc.transpose(0, 3, 1, 2)
    actions_hwc, state_hwc = model.predict(hwc, deterministic=True)
    actions_chw, state_chw = model.predict(chw, deterministic=True)
    assert actions_hwc.shape == (4,)
    np.testing.assert_array_equal(actions_hwc, actions_chw)
    np.testing.assert_allclose(state_hwc[0], state_chw[0])
    single, _ = model.predict(hwc[0], deterministic=True)
    assert np.shape(single) == ()
    assert int(single) == int(actions_hwc[0])


class RandomVectorEnv(gym.Env):
    """float64 vector observations (SB3 accepts any float Box), episodes of 15 steps."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float64)
    action_space = gym.spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self.observation_space.sample(), {}

    def step(self, action):
        self._t += 1
        return self.observation_space.sample(), float(action == 1), self._t >= 15, False, {}


def test_float64_vector_observations_train():
    model = IRIS("MlpPolicy", RandomVectorEnv(), seed=0, **tiny_iris_kwargs(image=False))
    model.learn(50)
    assert model.num_timesteps == 50
    action, _ = model.predict(np.zeros(3), deterministic=True)
    assert model.action_space.contains(int(action))


# --------------------------------------------------------------------------------------------------
# Several envs
# --------------------------------------------------------------------------------------------------


def test_two_envs_train():
    """n_steps_per_epoch=51 with 2 envs rounds up to 26 VecEnv steps (52 transitions) per epoch."""
    env = DummyVecEnv([ColorBoxEnv, ColorBoxEnv])
    model = IRIS("CnnPolicy", env, seed=0, **tiny_iris_kwargs(image=True, n_steps_per_epoch=51))
    model.learn(100)
    assert model.n_envs == 2
    assert model.num_timesteps == 104
    assert model._n_epochs == 2
    assert model.replay_buffer.n_envs == 2
    assert model.replay_buffer.n_steps == 104
    assert model._n_updates == 2 * 6


def test_two_vector_envs_train():
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = IRIS("MlpPolicy", env, seed=0, **tiny_iris_kwargs(image=False))
    model.learn(100)
    assert model.num_timesteps == 100
    assert model.replay_buffer.n_steps == 100
    actions, state = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (2,)
    assert state[0].shape == (1, 2, 32)


# --------------------------------------------------------------------------------------------------
# set_env / continued training
# --------------------------------------------------------------------------------------------------


def test_set_env_and_continue_training_keeps_num_timesteps():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True))
    model.learn(100)
    assert model.num_timesteps == 100

    # Continue on the same env without a reset.
    model.learn(50, reset_num_timesteps=False)
    assert model.num_timesteps == 150
    assert model.replay_buffer.n_steps == 150

    # Continue on a new env.
    model.set_env(ColorBoxEnv())
    model.learn(100, reset_num_timesteps=False)
    assert model.num_timesteps == 250
    assert model._n_epochs == 5
    assert model.replay_buffer.n_steps == 250

    # A reset count starts from zero again (the replay keeps its data, the epoch count goes on).
    model.learn(50)
    assert model.num_timesteps == 50
    assert model._n_epochs == 6
    assert model.replay_buffer.n_steps == 300


# --------------------------------------------------------------------------------------------------
# Documentation
# --------------------------------------------------------------------------------------------------


def test_every_constructor_argument_is_documented():
    doc = inspect.getdoc(IRIS) or ""
    documented = set(re.findall(r":param (\w+):", doc))
    parameters = set(inspect.signature(IRIS.__init__).parameters) - {"self", "_init_setup_model"}
    missing = sorted(parameters - documented)
    assert not missing, f"IRIS docstring lacks :param: for {missing}"
    stale = sorted(documented - parameters - {"_init_setup_model"})
    assert not stale, f"IRIS docstring documents arguments that do not exist: {stale}"


def test_every_constructor_argument_has_a_default_except_policy_and_env():
    """SB3's load() builds ``cls(policy=..., env=..., _init_setup_model=False)``: everything else needs a default."""
    parameters = inspect.signature(IRIS.__init__).parameters
    without_default = [
        name
        for name, p in parameters.items()
        if name not in ("self", "policy", "env") and p.default is inspect.Parameter.empty
    ]
    assert not without_default


def test_vector_tokenizer_standardisation_is_fitted_from_replay_and_saved(tmp_path):
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    tokenizer = model.policy.tokenizer
    assert tokenizer.needs_normalization_fit
    model.learn(model.n_steps_per_epoch)
    assert not tokenizer.needs_normalization_fit
    frames, _, _ = model.replay_buffer.sample_frames(2000)
    np.testing.assert_allclose(tokenizer.obs_std.numpy(), frames.std(0), rtol=0.25)
    standardized = tokenizer.preprocess(torch.as_tensor(frames))
    assert standardized.std(0).min() > 0.5 and standardized.std(0).max() < 2.0
    model.save(tmp_path / "model.zip")
    loaded = IRIS.load(tmp_path / "model.zip")
    assert not loaded.policy.tokenizer.needs_normalization_fit
    torch.testing.assert_close(loaded.policy.tokenizer.obs_std, tokenizer.obs_std)
