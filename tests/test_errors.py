"""Bad input gets a clear error that names the problem; large batches on little data do not crash."""

from __future__ import annotations

import json
import zipfile

import gymnasium as gym
import numpy as np
import pytest
from conftest import ColorBoxEnv, tiny_iris_kwargs
from gymnasium import spaces
from stable_baselines3.common.save_util import save_to_pkl
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_iris import IRIS


class SpacesEnv(gym.Env):
    """An env with arbitrary spaces (only the spaces matter to the checks under test)."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


VECTOR = spaces.Box(-1.0, 1.0, shape=(4,), dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Spaces
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env", ["Pendulum-v1", "raw"], ids=["env-id", "env"])
def test_box_action_space(env):
    env = gym.make("Pendulum-v1") if env == "raw" else env
    with pytest.raises(ValueError, match=r"only Discrete action spaces.*Box"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_multidiscrete_action_space():
    env = SpacesEnv(VECTOR, spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ValueError, match=r"only Discrete action spaces.*MultiDiscrete"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_discrete_action_space_not_starting_at_zero():
    """IRIS would send actions 0..n-1 to an env that expects start..start+n-1: refused."""
    env = SpacesEnv(VECTOR, spaces.Discrete(3, start=1))
    with pytest.raises(ValueError, match=r"Discrete action spaces that start at 0.*start=1"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_discrete_observation_space():
    env = SpacesEnv(spaces.Discrete(5), spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"supports only Box observation spaces.*Discrete"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_cnn_policy_with_vector_observations():
    with pytest.raises(ValueError, match=r"CnnPolicy needs image observations.*Use MlpPolicy"):
        IRIS("CnnPolicy", "CartPole-v1", **tiny_iris_kwargs(image=True))


def test_mlp_policy_with_image_observations():
    with pytest.raises(ValueError, match=r"MlpPolicy needs 1-D Box observations.*Use CnnPolicy"):
        IRIS("MlpPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=False))


def test_mlp_policy_with_3d_float_observations():
    env = SpacesEnv(spaces.Box(0.0, 1.0, shape=(2, 3, 4), dtype=np.float32), spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"MlpPolicy needs 1-D Box observations"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_dict_observations():
    env = SpacesEnv(spaces.Dict({"a": VECTOR, "b": VECTOR}), spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"does not support Dict observation spaces"):
        IRIS("MlpPolicy", env, **tiny_iris_kwargs(image=False))


def test_non_square_images():
    env = SpacesEnv(spaces.Box(0, 255, shape=(16, 8, 3), dtype=np.uint8), spaces.Discrete(2))
    with pytest.raises(ValueError, match=r"CnnPolicy needs square images"):
        IRIS("CnnPolicy", env, **tiny_iris_kwargs(image=True))


def test_image_size_the_tokenizer_cannot_downsample():
    env = ColorBoxEnv(size=18)  # 3 levels need a multiple of 4
    with pytest.raises(ValueError, match=r"resolution=18 must be divisible"):
        IRIS("CnnPolicy", env, **tiny_iris_kwargs(image=True))


# --------------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(tokenizer_batch_size=-1), r"tokenizer_batch_size=-1 must be an integer >= 1"),
        (dict(world_model_batch_size=0), r"world_model_batch_size=0 must be an integer >= 1"),
        (dict(actor_critic_batch_size=4.5), r"actor_critic_batch_size=4.5 must be an integer >= 1"),
        (dict(n_steps_per_epoch=0), r"n_steps_per_epoch=0 must be an integer >= 1"),
        (dict(imagination_horizon=1), r"imagination_horizon=1 must be >= 2"),
        (dict(burn_in=-1), r"burn_in=-1 must be an integer >= 0"),
        (dict(tokenizer_updates_per_epoch=-5), r"tokenizer_updates_per_epoch=-5 must be an integer >= 0"),
        (dict(gamma=1.5), r"gamma=1.5 must be in \[0, 1\]"),
        (dict(collect_epsilon=-0.1), r"collect_epsilon=-0.1 must be in \[0, 1\]"),
        (dict(imagination_temperature=-0.5), r"imagination_temperature=-0.5 must be >= 0"),
        (dict(imagination_outcome_temperature=-1.0), r"imagination_outcome_temperature=-1.0 must be >= 0"),
        (dict(buffer_size=0), r"buffer_size=0 must be >= 1"),
        (dict(replay_memory_budget_gb=-1.0), r"replay_memory_budget_gb=-1.0 must be > 0"),
        (dict(sequence_length=5), r"sequence_length=5 exceeds the world model's context.*max_blocks=4"),
    ],
)
def test_impossible_hyperparameters(overrides, message):
    with pytest.raises(ValueError, match=message):
        IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False, **overrides))


def _policy_kwargs(**changes):
    policy_kwargs = tiny_iris_kwargs(image=False)["policy_kwargs"]
    for part, value in changes.items():
        policy_kwargs[part] = {**policy_kwargs.get(part, {}), **value} if isinstance(value, dict) else value
    return policy_kwargs


@pytest.mark.parametrize(
    ("policy_kwargs", "error", "message"),
    [
        (
            _policy_kwargs(tokenizer_kwargs=dict(vocabsize=8)),
            ValueError,
            r"tokenizer_kwargs.*unknown keys \['vocabsize'\]",
        ),
        (
            _policy_kwargs(world_model_kwargs=dict(layers=2)),
            ValueError,
            r"world_model_kwargs.*unknown keys \['layers'\]",
        ),
        (_policy_kwargs(actor_critic_kwargs=dict(lstm=8)), ValueError, r"actor_critic_kwargs.*unknown keys \['lstm'\]"),
        (_policy_kwargs(world_model_kwargs=dict(num_actions=3)), ValueError, r"sets \['num_actions'\].*derived"),
        ({"tokeniser_kwargs": {}}, TypeError, r"tokeniser_kwargs"),
    ],
    ids=["tokenizer", "world-model", "actor-critic", "derived", "top-level"],
)
def test_unknown_policy_kwargs(policy_kwargs, error, message):
    kwargs = tiny_iris_kwargs(image=False)
    kwargs["policy_kwargs"] = policy_kwargs
    with pytest.raises(error, match=message):
        IRIS("MlpPolicy", "CartPole-v1", **kwargs)


def test_batches_larger_than_the_data_sample_with_replacement():
    """Batch sizes larger than the stored data do not crash: frames and segments are sampled with replacement.

    With 10 stored steps (and batch size 64 for all three phases) every phase still trains for its updates.
    """
    kwargs = tiny_iris_kwargs(
        image=False,
        n_steps_per_epoch=10,
        tokenizer_batch_size=64,
        world_model_batch_size=64,
        actor_critic_batch_size=64,
    )
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    model.learn(10)
    assert model.replay_buffer.n_steps == 10
    assert model._n_epochs == 1
    assert model._n_updates == 6
    frames, _, _ = model.replay_buffer.sample_frames(64)
    assert len(frames) == 64
    model.learn(10, reset_num_timesteps=False)
    assert model._n_updates == 12


# --------------------------------------------------------------------------------------------------
# predict / learn misuse
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cartpole_model():
    return IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))


def test_predict_wrong_observation_shape(cartpole_model):
    with pytest.raises(ValueError, match=r"Unexpected observation shape \(5,\)"):
        cartpole_model.predict(np.zeros(5, dtype=np.float32))


def test_predict_dict_observation(cartpole_model):
    with pytest.raises(ValueError, match=r"take Box observations, got a dict"):
        cartpole_model.policy.predict({"obs": np.zeros(4, dtype=np.float32)})


def test_learn_without_env(tmp_path, cartpole_model):
    cartpole_model.save(tmp_path / "iris.zip")
    loaded = IRIS.load(tmp_path / "iris.zip")
    with pytest.raises(ValueError, match=r"needs an environment.*set_env"):
        loaded.learn(10)


def test_more_envs_than_the_replay_holds(tmp_path):
    """A replay of 1 env cannot take the steps of 2 envs (SB3's set_env already refuses another n_envs)."""
    model = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    model.learn(50)
    model.save(tmp_path / "iris.zip")
    model.save_replay_buffer(tmp_path / "replay.pkl")
    loaded = IRIS.load(tmp_path / "iris.zip", env=DummyVecEnv([lambda: gym.make("CartPole-v1")] * 2))
    loaded.load_replay_buffer(tmp_path / "replay.pkl")
    with pytest.raises(ValueError, match=r"replay buffer holds data of 1 envs but the env has 2"):
        loaded.learn(50, reset_num_timesteps=False)


# --------------------------------------------------------------------------------------------------
# Loading broken files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    model.learn(50)
    path = tmp_path_factory.mktemp("saved") / "iris.zip"
    model.save(path)
    return model, path


def _rewrite(source, target, change):
    """Copy the zip ``source`` to ``target`` with ``change(name, data)`` applied (None drops the member)."""
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for name in archive.namelist():
            data = change(name, archive.read(name))
            if data is not None:
                out.writestr(name, data)


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.zip"
    path.write_bytes(b"this is not a model" * 100)
    with pytest.raises(ValueError, match=r"could not load IRIS model from .*corrupt\.zip: not a valid zip archive"):
        IRIS.load(path)


@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.9, 0.999])
def test_load_truncated_file(tmp_path, saved_model, fraction):
    _, source = saved_model
    raw = source.read_bytes()
    path = tmp_path / "truncated.zip"
    path.write_bytes(raw[: int(len(raw) * fraction)])
    # Depending on where the cut falls, zipfile finds no archive at all or only the end of an inner one.
    with pytest.raises(ValueError, match=r"could not load IRIS model from .*truncated\.zip: .*truncated"):
        IRIS.load(path)


def test_load_archive_with_corrupted_member(tmp_path, saved_model):
    """A zip whose bytes were damaged in transfer: the CRC check names the damaged member."""
    _, source = saved_model
    raw = bytearray(source.read_bytes())
    with zipfile.ZipFile(source) as archive:
        info = archive.getinfo("policy.pth")
    # Flip bytes inside policy.pth's data (after its local header), leaving the zip structure intact.
    position = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
    raw[position : position + 8] = bytes(b ^ 0xFF for b in raw[position : position + 8])
    path = tmp_path / "damaged.zip"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"could not load IRIS model from .*damaged\.zip: .*policy\.pth.*corrupted"):
        IRIS.load(path)


def test_load_archive_with_truncated_member(tmp_path, saved_model):
    _, source = saved_model
    path = tmp_path / "bad_member.zip"
    _rewrite(source, path, lambda name, data: data[: len(data) // 2] if name == "policy.pth" else data)
    with pytest.raises(ValueError, match=r"could not load IRIS model from .*bad_member\.zip"):
        IRIS.load(path)


def test_load_archive_with_bad_data_member(tmp_path, saved_model):
    _, source = saved_model
    path = tmp_path / "bad_data.zip"
    _rewrite(source, path, lambda name, data: b"{not json" if name == "data" else data)
    with pytest.raises(ValueError, match=r"could not load IRIS model from .*bad_data\.zip: JSONDecodeError"):
        IRIS.load(path)


@pytest.mark.parametrize("member", ["data", "policy.pth", "policy.world_model_optimizer.pth"])
def test_load_archive_missing_a_member(tmp_path, saved_model, member):
    _, source = saved_model
    path = tmp_path / "missing.zip"
    _rewrite(source, path, lambda name, data: None if name == member else data)
    with pytest.raises(
        ValueError, match=rf"could not load IRIS model from .*missing\.zip: the archive lacks \['{member}'\]"
    ):
        IRIS.load(path)


def test_load_other_algorithm_file(tmp_path):
    """A model file of another SB3 algorithm (DQN) is refused with a message that names the missing IRIS parts."""
    from stable_baselines3 import DQN

    DQN("MlpPolicy", "CartPole-v1", buffer_size=100, learning_starts=0).save(tmp_path / "dqn.zip")
    with pytest.raises(
        ValueError, match=r"could not load IRIS model from .*dqn\.zip: the archive lacks \['policy\.tok"
    ):
        IRIS.load(tmp_path / "dqn.zip")


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        IRIS.load(tmp_path / "nothing_here.zip")


def test_load_with_mismatched_env(saved_model):
    _, path = saved_model
    with pytest.raises(ValueError, match=r"Observation spaces do not match"):
        IRIS.load(path, env=SpacesEnv(spaces.Box(-1, 1, shape=(3,), dtype=np.float32), spaces.Discrete(2)))


def test_saved_data_is_json(saved_model):
    """Guard for the checks above: the test file really is an SB3 zip with a JSON ``data`` member."""
    _, path = saved_model
    with zipfile.ZipFile(path) as archive:
        assert "n_steps_per_epoch" in json.loads(archive.read("data"))


# --------------------------------------------------------------------------------------------------
# Loading broken replay buffers
# --------------------------------------------------------------------------------------------------


def test_load_replay_buffer_of_another_type(tmp_path, cartpole_model):
    save_to_pkl(tmp_path / "other.pkl", {"not": "a buffer"})
    with pytest.raises(TypeError, match=r"does not contain an IRIS EpisodeReplayBuffer \(found dict\)"):
        cartpole_model.load_replay_buffer(tmp_path / "other.pkl")


def test_load_replay_buffer_of_sb3(tmp_path, cartpole_model):
    from stable_baselines3.common.buffers import ReplayBuffer

    env = gym.make("CartPole-v1")
    save_to_pkl(tmp_path / "sb3.pkl", ReplayBuffer(10, env.observation_space, env.action_space))
    with pytest.raises(TypeError, match=r"does not contain an IRIS EpisodeReplayBuffer \(found ReplayBuffer\)"):
        cartpole_model.load_replay_buffer(tmp_path / "sb3.pkl")


def test_load_replay_buffer_garbage_file(tmp_path, cartpole_model):
    (tmp_path / "garbage.pkl").write_bytes(b"definitely not a pickle")
    with pytest.raises(ValueError, match=r"could not load an IRIS replay buffer from .*garbage\.pkl"):
        cartpole_model.load_replay_buffer(tmp_path / "garbage.pkl")


def test_load_replay_buffer_with_other_observations(tmp_path, cartpole_model):
    image_model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True))
    image_model.save_replay_buffer(tmp_path / "images.pkl")
    with pytest.raises(ValueError, match=r"replay observations of shape \(3, 16, 16\) do not match the model's \(4,\)"):
        cartpole_model.load_replay_buffer(tmp_path / "images.pkl")
