"""Saving and loading IRIS models and replay buffers, and training on after a load."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ColorBoxEnv, tiny_iris_kwargs
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_iris import IRIS
from sb3_iris.buffers import EpisodeReplayBuffer

OPTIMIZERS = ("policy.tokenizer_optimizer", "policy.world_model_optimizer", "policy.actor_critic_optimizer")


def assert_same(a, b, where: str = "") -> None:
    """Recursive equality of (nested) state dicts: tensors exactly equal, everything else ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def make_model(image: bool, **overrides) -> IRIS:
    if image:
        return IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, **overrides))
    return IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False, **overrides))


def observations_for(model: IRIS, n: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    if model.policy.is_image:
        return rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)  # HxWxC, as the env gives them
    return rng.normal(size=(n, *model.observation_space.shape)).astype(np.float32)


@pytest.fixture(scope="module", params=[True, False], ids=["cnn", "mlp"])
def trained(request, tmp_path_factory):
    """A model trained for 2 epochs (every phase trained, so every optimiser has state) and its saved file."""
    model = make_model(request.param)
    model.learn(100)
    path = tmp_path_factory.mktemp("model") / "iris.zip"
    model.save(path)
    return model, path


def test_save_load_identical_parameters_and_optimizer_states(trained):
    model, path = trained
    loaded = IRIS.load(path, device="cpu")
    saved, restored = model.get_parameters(), loaded.get_parameters()
    assert set(saved) == {"policy", *OPTIMIZERS}
    for name in OPTIMIZERS:
        assert saved[name]["state"], f"{name} has no state: the test would not check it"
    assert_same(saved, restored)
    # Also the policy's modules directly (get_parameters goes through the same names).
    assert_same(model.policy.state_dict(), loaded.policy.state_dict())


def test_load_without_env_predicts_identically(trained):
    """RL Zoo's enjoy loads with no env and calls predict with state and episode_start."""
    model, path = trained
    loaded = IRIS.load(path)
    assert loaded.env is None
    assert loaded.observation_space == model.observation_space
    assert loaded.policy.observation_space == model.policy.observation_space
    obs = observations_for(model)
    expected_actions, expected_state = model.predict(obs, deterministic=True)
    actions, state = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(actions, expected_actions)
    np.testing.assert_array_equal(state[0], expected_state[0])
    np.testing.assert_array_equal(state[1], expected_state[1])
    # A second step with the carried state, as an enjoy loop does it.
    starts = np.array([False, True, False, False, False])
    expected_next, _ = model.predict(obs, state=expected_state, episode_start=starts, deterministic=True)
    next_actions, _ = loaded.predict(obs, state=state, episode_start=starts, deterministic=True)
    np.testing.assert_array_equal(next_actions, expected_next)
    single, _ = loaded.predict(obs[0], deterministic=True)
    assert int(single) == int(expected_actions[0])


def test_counters_and_hyperparameters_survive(trained):
    model, path = trained
    loaded = IRIS.load(path)
    assert loaded.num_timesteps == model.num_timesteps == 100
    assert loaded._n_epochs == model._n_epochs == 2
    assert loaded._n_updates == model._n_updates == 12
    for name in (
        "n_steps_per_epoch",
        "tokenizer_batch_size",
        "world_model_batch_size",
        "actor_critic_batch_size",
        "sequence_length",
        "imagination_horizon",
        "burn_in",
        "gamma",
        "final_training_epochs",
        "seed",
    ):
        assert getattr(loaded, name) == getattr(model, name), name
    # policy_kwargs go through JSON (tuples come back as lists); the networks built from them are the same.
    assert loaded.policy_kwargs.keys() == model.policy_kwargs.keys()
    for part in ("tokenizer", "world_model", "actor_critic"):
        assert getattr(loaded.policy, part).config == getattr(model.policy, part).config, part
    assert type(loaded.policy) is type(model.policy)
    # The replay buffer is not part of the model file: a fresh, empty one is built.
    assert isinstance(loaded.replay_buffer, EpisodeReplayBuffer)
    assert loaded.replay_buffer.n_steps == 0


def test_save_load_file_like_object():
    model = make_model(image=False)
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    loaded = IRIS.load(buffer)
    assert_same(model.get_parameters(), loaded.get_parameters())


def test_path_without_zip_suffix(tmp_path):
    model = make_model(image=False)
    model.save(tmp_path / "no_suffix")
    assert (tmp_path / "no_suffix.zip").is_file()
    loaded = IRIS.load(tmp_path / "no_suffix")
    assert_same(model.get_parameters(), loaded.get_parameters())


def test_continue_training_after_load(trained):
    model, path = trained
    env = ColorBoxEnv() if model.policy.is_image else gym.make("CartPole-v1")
    loaded = IRIS.load(path, env=env)
    before = {k: v.clone() for k, v in loaded.policy.state_dict().items()}
    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 200
    assert loaded._n_epochs == 4
    assert loaded._n_updates == 24
    after = loaded.policy.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training after load changed nothing"


def test_load_with_more_envs_and_train(tmp_path):
    model = make_model(image=True)
    model.learn(50)
    model.save(tmp_path / "iris.zip")
    loaded = IRIS.load(tmp_path / "iris.zip", env=DummyVecEnv([ColorBoxEnv, ColorBoxEnv]))
    assert loaded.n_envs == 2
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.num_timesteps == 100
    assert loaded.replay_buffer.n_envs == 2


def test_replay_buffer_round_trip_and_training_after_load(tmp_path):
    model = make_model(image=True)
    model.learn(100)
    model.save(tmp_path / "iris.zip")
    model.save_replay_buffer(tmp_path / "replay.pkl")
    assert (tmp_path / "replay.pkl").is_file()

    loaded = IRIS.load(tmp_path / "iris.zip", env=ColorBoxEnv())
    loaded.load_replay_buffer(tmp_path / "replay.pkl")
    original, restored = model.replay_buffer, loaded.replay_buffer
    assert restored.n_steps == original.n_steps == 100
    assert restored.n_episodes == original.n_episodes
    assert restored.time_range == original.time_range
    times = np.arange(*original.time_range)
    envs = np.zeros_like(times)
    np.testing.assert_array_equal(restored.observations_at(envs, times), original.observations_at(envs, times))

    loaded.learn(100, reset_num_timesteps=False)
    assert loaded.num_timesteps == 200
    assert loaded.replay_buffer.n_steps == 200
    assert loaded._n_epochs == 4


def test_replay_buffer_path_without_suffix(tmp_path):
    """Like SB3, ``.pkl`` is added when missing (RL Zoo passes paths with and without it)."""
    model = make_model(image=False)
    model.learn(50)
    model.save_replay_buffer(tmp_path / "replay")
    assert (tmp_path / "replay.pkl").is_file()
    model.load_replay_buffer(tmp_path / "replay")
    assert model.replay_buffer.n_steps == 50


def test_saved_file_does_not_pickle_device_tensors(tmp_path):
    """Per-run device caches stay out of the file: a model trained on a GPU must load on a CPU-only machine."""
    import json
    import zipfile

    model = make_model(image=False)
    model.learn(50)
    model.save(tmp_path / "iris.zip")
    with zipfile.ZipFile(tmp_path / "iris.zip") as archive:
        data = json.loads(archive.read("data"))
    pickled_tensors = [k for k, v in data.items() if isinstance(v, dict) and "torch.Tensor" in v.get(":type:", "")]
    assert not pickled_tensors
    loaded = IRIS.load(tmp_path / "iris.zip", env=model.env)
    loaded.learn(50, reset_num_timesteps=False)
    assert loaded.num_timesteps == 100


def test_load_like_rl_zoo_enjoy(trained):
    """rl_zoo3.enjoy loads with custom_objects replacing the schedules, a seed and no env, then predicts."""
    model, path = trained
    custom_objects = {"learning_rate": 0.0, "lr_schedule": lambda _: 0.0, "clip_range": lambda _: 0.0}
    loaded = IRIS.load(path, custom_objects=custom_objects, device="cpu", seed=0)
    obs = observations_for(model, n=1)
    state, episode_start = None, np.ones((1,), dtype=bool)
    for _ in range(3):
        action, state = loaded.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        episode_start = np.zeros((1,), dtype=bool)
        assert action.shape == (1,)
    expected, _ = model.predict(obs, deterministic=True)
    first, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(first, expected)


def test_feedforward_actor_critic_trains_predicts_and_round_trips(tmp_path):
    """``actor_critic_kwargs=dict(recurrent=False)``: trained in imagination, saved, loaded, same actions."""
    kwargs = tiny_iris_kwargs(image=False)
    kwargs["policy_kwargs"]["actor_critic_kwargs"]["recurrent"] = False
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    before = {k: v.clone() for k, v in model.policy.actor_critic.state_dict().items()}
    model.learn(100)
    after = model.policy.actor_critic.state_dict()
    assert "feedforward.0.weight" in after and not any(k.startswith("lstm.") for k in after)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the actor-critic was never updated"
    observations = observations_for(model)
    actions, state = model.predict(observations, deterministic=True)
    # The state is passed through: the same observation gives the same action whatever came before.
    again, _ = model.predict(observations, state=state, episode_start=np.zeros(5, dtype=bool), deterministic=True)
    assert np.array_equal(actions, again)
    model.save(tmp_path / "ff.zip")
    loaded = IRIS.load(tmp_path / "ff.zip", device="cpu")
    assert loaded.policy.actor_critic.config.recurrent is False
    assert_same(loaded.policy.actor_critic.state_dict(), after)
    assert np.array_equal(loaded.predict(observations, deterministic=True)[0], actions)
