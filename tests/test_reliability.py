"""Nothing lost, nothing silent (issue 14): safe stops, atomic saves, all-or-nothing loads, exact resume, and
clear errors for bad input before any work is done."""

from __future__ import annotations

import contextlib
import errno
import math
import pickle
import signal
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import ColorBoxEnv, recording_logger, tiny_iris_kwargs
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_iris import IRIS
from sb3_iris.buffers import EpisodeReplayBuffer

EPISODE_LENGTH = 10


class FixedLengthEnv(gym.Env):
    """Vector observations, episodes of exactly ``EPISODE_LENGTH`` steps; can emit one bad value or interrupt.

    :param n_actions: size of the Discrete action space
    :param bad_observation_at: step count (over the env's life) at which the observation is this env's
        ``bad_value`` (None: never)
    :param bad_reward_at: the same for the reward
    :param bad_value: the value emitted
    :param interrupt_at: step count at which ``step`` raises ``KeyboardInterrupt`` (None: never)
    """

    def __init__(
        self,
        n_actions: int = 2,
        bad_observation_at: Optional[int] = None,
        bad_reward_at: Optional[int] = None,
        bad_value: float = math.nan,
        interrupt_at: Optional[int] = None,
    ) -> None:
        self.observation_space = spaces.Box(-10.0, 10.0, shape=(4,), dtype=np.float32)
        self.action_space = spaces.Discrete(n_actions)
        self.bad_observation_at, self.bad_reward_at, self.bad_value = bad_observation_at, bad_reward_at, bad_value
        self.interrupt_at = interrupt_at
        self.steps = 0
        self._t = 0

    def _observation(self) -> np.ndarray:
        obs = self.np_random.normal(size=4).astype(np.float32)
        obs[0] = self._t / EPISODE_LENGTH
        return obs

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._observation(), {}

    def step(self, action):
        self.steps += 1
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        self._t += 1
        obs = self._observation()
        reward = float(action == 1)
        if self.steps == self.bad_observation_at:
            obs[1] = self.bad_value
        if self.steps == self.bad_reward_at:
            reward = self.bad_value
        return obs, reward, self._t >= EPISODE_LENGTH, False, {}


class StopAt(BaseCallback):
    """Returns False (or raises ``KeyboardInterrupt``) at its ``call``-th ``on_step``."""

    def __init__(self, call: int, interrupt: bool = False) -> None:
        super().__init__()
        self.call, self.interrupt = call, interrupt

    def _on_step(self) -> bool:
        if self.n_calls == self.call:
            if self.interrupt:
                raise KeyboardInterrupt
            return False
        return True


def vector_model(env: Optional[gym.Env] = None, **overrides: Any) -> IRIS:
    return IRIS("MlpPolicy", env or FixedLengthEnv(), seed=0, **tiny_iris_kwargs(image=False, **overrides))


def episode_lengths(buffer: EpisodeReplayBuffer) -> np.ndarray:
    """Lengths of the stored episodes: completed ones in order of their end, then the ongoing ones."""
    _, starts, ends = buffer._episode_table()
    return ends - starts


def snapshot(model: IRIS) -> dict:
    """Deep copy of every state dict of the model (policy and optimisers)."""
    return pickle.loads(pickle.dumps(model.get_parameters()))


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Recursive equality: tensors with ``torch.equal``, arrays exactly, everything else ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


# --------------------------------------------------------------------------------------------------
# Data loss: stops and interrupts
# --------------------------------------------------------------------------------------------------


def test_callback_stop_keeps_the_last_transition_and_the_episode_boundaries():
    model = vector_model()
    model.learn(256, callback=StopAt(30))
    assert model.num_timesteps == 30
    assert model.replay_buffer.n_steps == 30, "the transition of the stopping step was dropped"
    model.learn(64, reset_num_timesteps=False)
    assert model.replay_buffer.n_steps == model.num_timesteps
    lengths = episode_lengths(model.replay_buffer)
    assert lengths.max() == EPISODE_LENGTH, f"two episodes were merged: {lengths.tolist()}"
    assert (lengths[:-1] == EPISODE_LENGTH).all(), lengths.tolist()


def test_keyboard_interrupt_in_a_callback_keeps_the_transition():
    model = vector_model()
    with pytest.raises(KeyboardInterrupt):
        model.learn(256, callback=StopAt(30, interrupt=True))
    assert model.replay_buffer.n_steps == model.num_timesteps == 30
    model.learn(64, reset_num_timesteps=False)
    lengths = episode_lengths(model.replay_buffer)
    assert (lengths[:-1] == EPISODE_LENGTH).all() and lengths.max() == EPISODE_LENGTH, lengths.tolist()


def test_interrupt_inside_env_step_resets_the_env_at_the_next_learn():
    """The env's state is unknown after an interrupted step: the next learn() resets it and ends the replay's
    ongoing episode there (truncated) instead of joining it to the env's next steps."""
    model = vector_model(FixedLengthEnv(interrupt_at=25))
    with pytest.raises(KeyboardInterrupt):
        model.learn(256)
    assert model.replay_buffer.n_steps == model.num_timesteps == 24
    model.learn(64, reset_num_timesteps=False)
    lengths = episode_lengths(model.replay_buffer)
    assert lengths.max() <= EPISODE_LENGTH, lengths.tolist()
    assert lengths[:3].tolist() == [10, 10, 4]  # the interrupted episode is closed after its 4 stored steps


def test_interrupt_in_the_tokenizer_phase_leaves_no_stale_tokens():
    model = vector_model(learning_rate=3e-3)  # one update changes some tokens
    model.learn(50)
    buffer = model.replay_buffer
    envs = np.zeros(buffer.n_steps, dtype=np.int64)
    times = np.arange(*buffer.time_range)
    tokens_before, valid_before = model.tokenizer_cache.tokens.lookup(envs, times)
    assert valid_before.any(), "no cached tokens: the test would not check anything"

    optimizer = model.policy.tokenizer_optimizer
    real_step = optimizer.step

    def step_then_interrupt(*args, **kwargs):
        real_step(*args, **kwargs)  # the tokenizer has changed when the interrupt comes
        raise KeyboardInterrupt

    optimizer.step = step_then_interrupt
    model._n_epochs += 1
    with pytest.raises(KeyboardInterrupt):
        model.train()
    del optimizer.step

    cached, valid = model.tokenizer_cache.tokens.lookup(envs, times)
    current = model.tokenizer_cache.tokenize(buffer.observations_at(envs, times)).cpu().numpy()
    changed = valid_before & (tokens_before != current).any(axis=1)
    assert changed.any(), "the interrupted update changed no cached token: the test would not check anything"
    stale = valid & (cached != current).any(axis=1)
    assert not stale.any(), f"{stale.sum()} of {valid.sum()} valid cache entries disagree with the tokenizer"


# --------------------------------------------------------------------------------------------------
# Data loss: atomic saves
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(limit: int):
    """The kernel refuses writes past ``limit`` bytes (``RLIMIT_FSIZE``) with EFBIG, within this block."""
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_failed_saves_keep_the_previous_files(tmp_path):
    """Saves that fail halfway (a file-size limit) over good files leave those files loadable and unchanged."""
    model = vector_model()
    model.learn(50)
    model_path, replay_path = tmp_path / "iris.zip", tmp_path / "replay.pkl"
    model.save(model_path)
    model.save_replay_buffer(replay_path)
    saved = snapshot(model)
    model.learn(50, reset_num_timesteps=False)  # what the failed saves would have written differs
    limit = min(model_path.stat().st_size, replay_path.stat().st_size) // 2
    with file_size_limit(limit):
        with pytest.raises(OSError) as model_error:
            model.save(model_path)
        with pytest.raises(OSError) as replay_error:
            model.save_replay_buffer(replay_path)
    assert model_error.value.errno == replay_error.value.errno == errno.EFBIG
    loaded = IRIS.load(model_path)
    assert_same(loaded.get_parameters(), saved)
    loaded.load_replay_buffer(replay_path)
    assert loaded.replay_buffer.n_steps == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iris.zip", "replay.pkl"], "temporary files left behind"


def test_save_without_suffix_and_over_an_existing_file(tmp_path):
    model = vector_model()
    model.save(tmp_path / "model")
    model.save(tmp_path / "model")
    model.save_replay_buffer(tmp_path / "replay")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.zip", "replay.pkl"]
    assert_same(IRIS.load(tmp_path / "model").get_parameters(), model.get_parameters())


# --------------------------------------------------------------------------------------------------
# Data loss: set_parameters and load_replay_buffer
# --------------------------------------------------------------------------------------------------


def test_set_parameters_of_another_architecture_changes_nothing(tmp_path):
    model = vector_model()
    model.learn(50)  # optimiser states exist
    other_kwargs = tiny_iris_kwargs(image=False)
    other_kwargs["policy_kwargs"]["tokenizer_kwargs"]["hidden_sizes"] = (48,)
    other_kwargs["policy_kwargs"]["actor_critic_kwargs"]["lstm_dim"] = 16
    other = IRIS("MlpPolicy", FixedLengthEnv(), seed=1, **other_kwargs)
    other.save(tmp_path / "other.zip")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"nothing was changed.*'policy\.tokenizer\.encoder\.0\.weight' has shape "):
        model.set_parameters(tmp_path / "other.zip")
    assert_same(model.get_parameters(), before)
    with pytest.raises(ValueError, match=r"nothing was changed.*; and \d+ more"):
        model.set_parameters(other.get_parameters(), exact_match=False)
    assert_same(model.get_parameters(), before)


def test_set_parameters_with_a_mismatched_optimizer_state_changes_nothing():
    model = vector_model()
    model.learn(50)
    params = snapshot(model)
    first = next(iter(params["policy.tokenizer_optimizer"]["state"]))
    params["policy.tokenizer_optimizer"]["state"][first]["exp_avg"] = torch.zeros(3, 3)
    params["policy"] = {k: v + 1 for k, v in params["policy"].items()}  # would change the policy if loaded
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"'policy\.tokenizer_optimizer' state 'exp_avg' of parameter .* \(3, 3\)"):
        model.set_parameters(params)
    assert_same(model.get_parameters(), before)


def _saved_replay(tmp_path, n_actions: int = 2) -> tuple[IRIS, Any]:
    model = vector_model(FixedLengthEnv(n_actions=n_actions))
    model.learn(50)
    path = tmp_path / f"replay{n_actions}.pkl"
    model.save_replay_buffer(path)
    return model, path


def test_replay_of_another_action_space_is_refused(tmp_path):
    _, path = _saved_replay(tmp_path, n_actions=6)
    model = vector_model(FixedLengthEnv(n_actions=3))
    with pytest.raises(ValueError, match=r"holds actions of Discrete\(6\) but the model has .*Discrete\(3\)"):
        model.load_replay_buffer(path)
    assert model.replay_buffer.n_steps == 0


def test_replay_without_recorded_action_space_is_checked_by_its_actions(tmp_path):
    """Files of older versions carry no action space: the stored actions must fit the model's."""
    source, path = _saved_replay(tmp_path, n_actions=6)
    buffer = source.replay_buffer
    assert buffer._actions.max() >= 3, "no action >= 3 was collected: the test would not check anything"
    buffer.action_space = None
    with open(path, "wb") as file:
        pickle.dump(buffer, file)
    model = vector_model(FixedLengthEnv(n_actions=3))
    with pytest.raises(ValueError, match=r"stored actions range over \[0, [3-5]\].*n=3 actions"):
        model.load_replay_buffer(path)


def _tamper(buffer: EpisodeReplayBuffer, case: str) -> None:
    if case == "observation-dtype":
        buffer._observations = buffer._observations.astype(np.float64)
    elif case == "storage-dtype":
        buffer._obs_dtype = np.dtype(np.uint8)
        buffer._observations = buffer._observations.astype(np.uint8)
    elif case == "reward-nan":
        buffer._rewards[0, 3] = np.nan
    elif case == "episode-table":
        buffer._episodes[0, 2] = buffer._end + 5
    elif case == "ongoing-starts":
        buffer._ongoing_starts[:] = buffer._end + 3


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("observation-dtype", r"inconsistent replay buffer: observations are float64 \(1, 50, 4\), expected float32"),
        ("storage-dtype", r"replay observations stored as uint8 do not match the model's float32"),
        ("reward-nan", r"stored rewards contain NaN or inf"),
        ("episode-table", r"episodes outside envs \[0, 1\) or times \[0, 50\]"),
        ("ongoing-starts", r"ongoing episode starts \[53\] do not fit 1 envs and end 50"),
    ],
)
def test_inconsistent_replay_is_refused(tmp_path, case, message):
    source, path = _saved_replay(tmp_path)
    with open(path, "rb") as file:
        buffer = pickle.load(file)
    _tamper(buffer, case)
    with open(path, "wb") as file:
        pickle.dump(buffer, file)
    model = vector_model()
    with pytest.raises(ValueError, match=message):
        model.load_replay_buffer(path)
    assert model.replay_buffer.n_steps == 0


# --------------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------------


def _resume_env(image: bool, n_envs: int) -> DummyVecEnv:
    return DummyVecEnv([ColorBoxEnv if image else (lambda: gym.make("CartPole-v1"))] * n_envs)


def _resume_model(image: bool, env: DummyVecEnv) -> IRIS:
    return IRIS("CnnPolicy" if image else "MlpPolicy", env, seed=0, **tiny_iris_kwargs(image=image))


@pytest.mark.parametrize("n_envs", [1, 2])
@pytest.mark.parametrize("image", [False, True], ids=["mlp", "cnn"])
def test_save_load_learn_equals_the_uninterrupted_run(tmp_path, image, n_envs):
    """learn(50) -> save -> load -> learn(50, reset_num_timesteps=False) == learn(100), bit for bit (CPU)."""
    reference = _resume_model(image, _resume_env(image, n_envs))
    reference.learn(100)
    reference_rng = torch.get_rng_state()

    env = _resume_env(image, n_envs)
    first = _resume_model(image, env)
    first.learn(50)
    first.save(tmp_path / "iris.zip")
    first.save_replay_buffer(tmp_path / "replay.pkl")
    del first
    torch.manual_seed(12345)  # whatever happens between save and load does not matter
    np.random.seed(12345)
    resumed = IRIS.load(tmp_path / "iris.zip", env=env, force_reset=False, device="cpu")
    resumed.load_replay_buffer(tmp_path / "replay.pkl")
    resumed.learn(50, reset_num_timesteps=False)

    expected, actual = reference.get_parameters(), resumed.get_parameters()
    assert len(expected["policy"]) > 40
    different = [key for key, tensor in expected["policy"].items() if not torch.equal(tensor, actual["policy"][key])]
    assert not different, f"{len(different)} of {len(expected['policy'])} tensors differ: {different[:5]}"
    assert_same(expected, actual)  # the optimiser states too
    assert torch.equal(torch.get_rng_state(), reference_rng)
    assert (resumed.num_timesteps, resumed._n_epochs, resumed._n_updates) == (
        reference.num_timesteps,
        reference._n_epochs,
        reference._n_updates,
    )
    times = np.arange(*reference.replay_buffer.time_range)
    for env_index in range(n_envs):
        envs = np.full_like(times, env_index)
        np.testing.assert_array_equal(
            resumed.replay_buffer.observations_at(envs, times), reference.replay_buffer.observations_at(envs, times)
        )


def test_load_continues_the_random_streams_even_with_a_seed(tmp_path):
    """RL Zoo's ``-i`` loads with ``seed=`` and a fresh env: the saved streams still continue."""
    model = vector_model()
    model.learn(50)
    model.save(tmp_path / "iris.zip")
    expected = (torch.rand(3), np.random.random(3))
    loaded = IRIS.load(tmp_path / "iris.zip", env=FixedLengthEnv(), seed=123, n_steps_per_epoch=20)
    assert loaded.seed == 123 and loaded.n_steps_per_epoch == 20
    assert torch.equal(torch.rand(3), expected[0])
    np.testing.assert_array_equal(np.random.random(3), expected[1])


def test_resume_with_a_fresh_env_closes_the_ongoing_episode(tmp_path):
    """A fresh process cannot continue the env's episode: the env restarts and the replay's ongoing episode ends
    (truncated) at the save point instead of being joined to the new one."""
    model = vector_model(n_steps_per_epoch=55)
    model.learn(55)  # an episode of 5 steps is ongoing
    model.save(tmp_path / "iris.zip")
    model.save_replay_buffer(tmp_path / "replay.pkl")
    loaded = IRIS.load(tmp_path / "iris.zip", env=FixedLengthEnv())
    loaded.load_replay_buffer(tmp_path / "replay.pkl")
    loaded.learn(30, reset_num_timesteps=False)
    lengths = episode_lengths(loaded.replay_buffer)
    assert lengths.max() <= EPISODE_LENGTH, lengths.tolist()
    assert lengths[:6].tolist() == [10, 10, 10, 10, 10, 5]
    assert loaded.replay_buffer.n_steps == loaded.num_timesteps == 110


# --------------------------------------------------------------------------------------------------
# Guarded inputs: hyperparameters
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(ent_coef=math.nan), r"ent_coef=nan must be >= 0"),
        (dict(max_grad_norm=math.nan), r"max_grad_norm=nan must be > 0"),
        (dict(collect_temperature=math.nan), r"collect_temperature=nan must be > 0"),
        (dict(imagination_temperature=math.inf), r"imagination_temperature=inf must be >= 0 \(and finite\)"),
        (dict(learning_rate=math.nan), r"learning_rate=nan must be > 0"),
        (dict(gamma="0.99"), r"gamma='0.99' must be a number in \[0, 1\] \(got str\)"),
        (dict(gae_lambda=math.nan), r"gae_lambda=nan must be in \[0, 1\]"),
        (dict(buffer_size="4"), r"buffer_size='4' must be >= 1 \(an integer\) or None"),
        (dict(replay_memory_budget_gb=math.nan), r"replay_memory_budget_gb=nan must be > 0"),
        (dict(reconstruction_cache_gb=math.nan), r"reconstruction_cache_gb=nan must be >= 0"),
        (dict(tokenizer_start_after_epochs=[5]), r"tokenizer_start_after_epochs=\[5\] must be an integer >= 0"),
        (dict(world_model_start_after_epochs="5"), r"world_model_start_after_epochs='5' must be an integer >= 0"),
        (dict(actor_critic_start_after_epochs=2.5), r"actor_critic_start_after_epochs=2.5 must be an integer >= 0"),
        (dict(tokenizer_start_after_epochs=-1), r"tokenizer_start_after_epochs=-1 must be an integer >= 0"),
    ],
)
def test_bad_hyperparameter_is_refused_at_construction(overrides, message):
    with pytest.raises(ValueError, match=message):
        IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False, **overrides))


@pytest.mark.parametrize("total_timesteps", [-10, 2.5, math.nan, "100"])
def test_bad_learn_budget_is_refused(total_timesteps):
    model = vector_model()
    with pytest.raises(ValueError, match=r"total_timesteps=.* must be an integer >= 0"):
        model.learn(total_timesteps)
    assert model.num_timesteps == 0


def test_integral_float_learn_budget_is_accepted():
    model = vector_model()
    model.learn(5e1)
    assert model.num_timesteps == 50


@pytest.mark.parametrize("part", ["tokenizer", "world_model", "actor_critic"])
def test_zero_updates_per_epoch_freezes_a_part(part):
    model = vector_model(**{f"{part}_updates_per_epoch": 0})
    logger, writer = recording_logger()
    model.set_logger(logger)
    frozen = {k: v.clone() for k, v in getattr(model.policy, part).state_dict().items()}
    model.learn(100)
    assert_same(getattr(model.policy, part).state_dict(), frozen)
    values = [v for record in writer.records for k, v in record.items() if isinstance(v, float)]
    assert values and all(math.isfinite(v) for v in values), "a NaN or inf was logged"
    assert f"train/{part}_loss" not in writer.keys
    assert f"time/{part}_seconds" not in writer.keys


# --------------------------------------------------------------------------------------------------
# Guarded inputs: what the env returns
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_observation_is_refused_before_it_is_stored(bad_value):
    model = vector_model(FixedLengthEnv(bad_observation_at=65, bad_value=bad_value))
    with pytest.raises(ValueError, match=rf"non-finite observation \({bad_value}\) in env 0 at timestep 65"):
        model.learn(200)
    assert model.replay_buffer.n_steps == 64
    times = np.arange(*model.replay_buffer.time_range)
    assert np.isfinite(model.replay_buffer.observations_at(np.zeros_like(times), times)).all()
    assert all(torch.isfinite(v).all() for v in model.policy.state_dict().values() if v.is_floating_point())


def test_nan_reward_is_refused():
    model = vector_model(FixedLengthEnv(bad_reward_at=7))
    with pytest.raises(ValueError, match=r"non-finite reward \(nan\) in env 0 at timestep 7"):
        model.learn(50)
    assert model.replay_buffer.n_steps == 6


# --------------------------------------------------------------------------------------------------
# Guarded inputs: policy_kwargs
# --------------------------------------------------------------------------------------------------


def _with(part: str, **fields: Any) -> dict:
    kwargs = tiny_iris_kwargs(image=False)
    if part == "policy":
        kwargs["policy_kwargs"].update(fields)
    else:
        kwargs["policy_kwargs"][part].update(fields)
    return kwargs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (_with("tokenizer_kwargs", vocab_size=1), r"tokenizer_kwargs.*vocab_size=1 must be an integer >= 2"),
        (_with("tokenizer_kwargs", hidden_sizes=(0,)), r"tokenizer_kwargs.*hidden_sizes=\(0,\) must be a tuple of"),
        (_with("tokenizer_kwargs", hidden_sizes=(32.0,)), r"hidden_sizes=\(32\.0,\) must be a tuple of integers"),
        (_with("tokenizer_kwargs", embed_dim="16"), r"MlpTokenizerConfig: embed_dim='16' must be an integer >= 1"),
        (_with("tokenizer_kwargs", l2_weight=-1.0), r"l2_weight=-1\.0 must be a finite number >= 0"),
        (_with("tokenizer_kwargs", obs_scale=[1, 1, 0, 1]), r"obs_scale=\(1, 1, 0, 1\) must be None or a list"),
        (_with("world_model_kwargs", num_layers=1.5), r"world_model_kwargs.*num_layers=1\.5 must be an integer >= 1"),
        (_with("world_model_kwargs", embed_dim=0), r"world_model_kwargs.*embed_dim=0 must be an integer >= 1"),
        (_with("world_model_kwargs", attention_dropout=1.0), r"attention_dropout=1\.0 must be a number in \[0, 1\)"),
        (_with("actor_critic_kwargs", lstm_dim=0), r"actor_critic_kwargs.*lstm_dim=0 must be an integer >= 1"),
        (_with("actor_critic_kwargs", mlp_hidden_sizes=("32",)), r"mlp_hidden_sizes=\('32',\) must be a tuple"),
        (_with("policy", world_model_weight_decay="x"), r"world_model_weight_decay'\]='x' must be a number >= 0"),
        (_with("policy", world_model_weight_decay=-0.1), r"world_model_weight_decay'\]=-0\.1 must be >= 0"),
        (_with("policy", tokenizer_kwargs=[("vocab_size", 8)]), r"policy_kwargs\['tokenizer_kwargs'\]=.* a dict"),
    ],
)
def test_bad_policy_kwargs_are_refused_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IRIS("MlpPolicy", "CartPole-v1", **kwargs)


def test_bad_conv_tokenizer_kwargs_are_refused():
    kwargs = tiny_iris_kwargs(image=True)
    kwargs["policy_kwargs"]["tokenizer_kwargs"]["channel_multipliers"] = (1, 0, 1)
    with pytest.raises(ValueError, match=r"ConvTokenizerConfig: channel_multipliers=\(1, 0, 1\) must be a tuple"):
        IRIS("CnnPolicy", ColorBoxEnv(), **kwargs)


# --------------------------------------------------------------------------------------------------
# Guarded inputs: predict
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictors() -> dict[str, IRIS]:
    return {
        "mlp": vector_model(),
        "cnn": IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True)),
    }


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_predict_on_an_empty_batch(predictors, kind):
    model = predictors[kind]
    shape = (0, 4) if kind == "mlp" else (0, 16, 16, 3)
    dtype = np.float32 if kind == "mlp" else np.uint8
    actions, (h, c) = model.predict(np.zeros(shape, dtype=dtype))
    assert actions.shape == (0,) and h.shape == c.shape == (1, 0, 32)


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.0, 1.0)])
def test_predict_refuses_float_images_out_of_uint8_values(predictors, low, high):
    images = np.random.default_rng(0).uniform(low, high, size=(2, 16, 16, 3)).astype(np.float32)
    with pytest.raises(ValueError, match=r"CnnPolicy takes uint8 images with values in \[0, 255\], got float32"):
        predictors["cnn"].predict(images)


def test_predict_accepts_float_images_holding_uint8_values(predictors):
    images = np.random.default_rng(0).integers(0, 256, size=(2, 16, 16, 3)).astype(np.uint8)
    model = predictors["cnn"]
    expected, _ = model.predict(images, deterministic=True)
    actions, _ = model.predict(images.astype(np.float32), deterministic=True)
    np.testing.assert_array_equal(actions, expected)


@pytest.mark.parametrize(
    ("state_shape", "message"),
    [
        ((1, 2, 31), r"state h has shape \(1, 2, 31\), expected \(1, n_envs, lstm_dim\)=\(1, 2, 32\)"),
        ((1, 1, 32), r"state h has shape \(1, 1, 32\), expected \(1, n_envs, lstm_dim\)=\(1, 2, 32\)"),
        ((2, 32), r"state h has shape \(2, 32\)"),
    ],
)
def test_predict_refuses_a_state_of_the_wrong_shape(predictors, state_shape, message):
    state = (np.zeros(state_shape, np.float32), np.zeros(state_shape, np.float32))
    with pytest.raises(ValueError, match=message):
        predictors["mlp"].predict(np.zeros((2, 4), np.float32), state=state)


def test_predict_refuses_an_episode_start_of_the_wrong_size(predictors):
    with pytest.raises(ValueError, match=r"episode_start has 3 entries .* n_envs=2"):
        predictors["mlp"].predict(np.zeros((2, 4), np.float32), episode_start=np.zeros(3, dtype=bool))
