"""Progress output of long training phases, and imagination on a model that has not called learn()."""

import numpy as np

import sb3_iris.iris as iris_module
from sb3_iris import IRIS
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs


def test_verbose_prints_phase_progress(monkeypatch, capsys):
    monkeypatch.setattr(iris_module, "PROGRESS_PRINT_SECONDS", 0.0)
    model = IRIS("CnnPolicy", ColorBoxEnv(), verbose=1, **tiny_iris_kwargs(image=True))
    model.learn(model.n_steps_per_epoch)
    err = capsys.readouterr().err
    for phase in ("tokenizer", "world_model", "actor_critic"):
        assert f"{phase}: 1/" in err, err


def test_quiet_model_prints_no_progress(monkeypatch, capsys):
    monkeypatch.setattr(iris_module, "PROGRESS_PRINT_SECONDS", 0.0)
    model = IRIS("CnnPolicy", ColorBoxEnv(), verbose=0, **tiny_iris_kwargs(image=True))
    model.learn(model.n_steps_per_epoch)
    assert "updates" not in capsys.readouterr().err


def test_imagine_before_learn_uses_the_replay():
    model = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    rng = np.random.default_rng(0)
    for step in range(12):
        model.replay_buffer.add(rng.normal(size=(1, 4)).astype(np.float32), [step % 2], [1.0], [step == 11], [False])
    rollout = model.imagine(3)
    assert rollout.actions.shape == (3, model.imagination_horizon)
