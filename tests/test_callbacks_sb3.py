"""SB3's own callbacks and the callback protocol (locals, stopping) with IRIS."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ColorBoxEnv, recording_logger, tiny_iris_kwargs
from stable_baselines3.common.callbacks import (
    BaseCallback,
    CallbackList,
    CheckpointCallback,
    EvalCallback,
    StopTrainingOnMaxEpisodes,
)
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecTransposeImage

from sb3_iris import IRIS


def image_model(**overrides) -> IRIS:
    return IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, **overrides))


class RecordingCallback(BaseCallback):
    """Checks the locals SB3 callbacks rely on at every step and counts the protocol's calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"training_start": 0, "rollout_start": 0, "step": 0, "rollout_end": 0, "training_end": 0}
        self.shapes: list[tuple] = []

    def _on_training_start(self) -> None:
        self.calls["training_start"] += 1

    def _on_rollout_start(self) -> None:
        self.calls["rollout_start"] += 1

    def _on_step(self) -> bool:
        self.calls["step"] += 1
        n_envs = self.training_env.num_envs
        for key in ("new_obs", "rewards", "dones", "infos"):
            assert key in self.locals, f"callback.locals lacks {key!r}"
        new_obs, rewards, dones, infos = (self.locals[k] for k in ("new_obs", "rewards", "dones", "infos"))
        assert rewards.shape == (n_envs,)
        assert dones.shape == (n_envs,) and dones.dtype == bool
        assert isinstance(infos, (list, tuple)) and len(infos) == n_envs
        self.shapes.append(new_obs.shape)
        assert self.num_timesteps == self.model.num_timesteps
        return True

    def _on_rollout_end(self) -> None:
        self.calls["rollout_end"] += 1

    def _on_training_end(self) -> None:
        self.calls["training_end"] += 1


def test_callback_locals_and_protocol_with_callback_list():
    env = make_vec_env(ColorBoxEnv, n_envs=2, seed=0)
    model = IRIS("CnnPolicy", env, seed=0, **tiny_iris_kwargs(image=True))
    first, second = RecordingCallback(), RecordingCallback()
    model.learn(100, callback=CallbackList([first, second]))
    for callback in (first, second):
        assert callback.calls == {
            "training_start": 1,
            "rollout_start": 2,  # one collection per epoch
            "step": 50,  # VecEnv steps: 100 transitions / 2 envs
            "rollout_end": 2,
            "training_end": 1,
        }
        # new_obs as the policy sees it: transposed to CxHxW by VecTransposeImage.
        assert set(callback.shapes) == {(2, 3, 16, 16)}


def test_callback_as_a_function_of_locals():
    """A plain list of callbacks is turned into a CallbackList by SB3."""
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    recorder = RecordingCallback()
    model.learn(50, callback=[recorder])
    assert recorder.calls["step"] == 50


class StopAt(BaseCallback):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n
        self.ended = False

    def _on_step(self) -> bool:
        return self.num_timesteps < self.n

    def _on_training_end(self) -> None:
        self.ended = True


def test_callback_returning_false_stops_promptly():
    """Stopping skips the rest of the collection, the epoch's training and the final training epochs."""
    model = image_model(final_training_epochs=3)
    stopper = StopAt(7)
    model.learn(10_000, callback=stopper)
    assert model.num_timesteps == 7
    assert model._n_epochs == 0
    assert stopper.ended


def test_callback_stops_in_a_later_epoch():
    model = image_model(final_training_epochs=3)
    model.learn(10_000, callback=StopAt(70))
    assert model.num_timesteps == 70
    assert model._n_epochs == 1


def test_stop_training_on_max_episodes():
    model = IRIS("CnnPolicy", ColorBoxEnv(episode_length=10), seed=0, **tiny_iris_kwargs(image=True))
    model.learn(10_000, callback=StopTrainingOnMaxEpisodes(max_episodes=7))
    assert model.num_timesteps == 70
    assert model._n_epochs == 1


def test_checkpoint_callback_writes_loadable_files(tmp_path):
    model = image_model()
    checkpoint = CheckpointCallback(save_freq=50, save_path=str(tmp_path), name_prefix="iris", save_replay_buffer=True)
    model.learn(100, callback=checkpoint)
    for steps in (50, 100):
        assert (tmp_path / f"iris_{steps}_steps.zip").is_file()
        assert (tmp_path / f"iris_replay_buffer_{steps}_steps.pkl").is_file()
    restored = IRIS.load(tmp_path / "iris_100_steps.zip", env=ColorBoxEnv())
    # Saved during the step callback, before the step was stored: 99 transitions in the replay.
    restored.load_replay_buffer(tmp_path / "iris_replay_buffer_100_steps.pkl")
    assert restored.replay_buffer.n_steps == 99
    restored.learn(50, reset_num_timesteps=False)
    assert restored.num_timesteps == 150


def test_eval_callback_runs_and_records(tmp_path):
    eval_env = VecTransposeImage(DummyVecEnv([lambda: Monitor(ColorBoxEnv())]))
    logger, writer = recording_logger()
    model = image_model()
    model.set_logger(logger)
    evaluation = EvalCallback(
        eval_env,
        n_eval_episodes=2,
        eval_freq=50,
        log_path=str(tmp_path),
        best_model_save_path=str(tmp_path),
        deterministic=True,
        verbose=0,
    )
    model.learn(100, callback=evaluation)
    assert evaluation.evaluations_timesteps == [50, 100]
    assert np.asarray(evaluation.evaluations_results).shape == (2, 2)
    assert np.asarray(evaluation.evaluations_length).tolist() == [[20, 20], [20, 20]]
    assert (tmp_path / "evaluations.npz").is_file()
    assert (tmp_path / "best_model.zip").is_file()
    assert 0.0 <= evaluation.last_mean_reward <= 20.0
    assert "eval/mean_reward" in writer.keys
    IRIS.load(tmp_path / "best_model.zip").predict(eval_env.reset(), deterministic=True)


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_progress_bar():
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False))
    model.learn(100, progress_bar=True, callback=RecordingCallback())
    assert model.num_timesteps == 100
