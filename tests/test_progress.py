"""Progress output of long training phases (through SB3's logger), and imagination on a model that has not called
learn()."""

import numpy as np
from stable_baselines3.common.logger import configure

import sb3_iris.iris as iris_module
from sb3_iris import IRIS
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs


def test_verbose_prints_phase_progress(monkeypatch, capsys):
    monkeypatch.setattr(iris_module, "PROGRESS_PRINT_SECONDS", 0.0)
    model = IRIS("CnnPolicy", ColorBoxEnv(), verbose=1, **tiny_iris_kwargs(image=True))
    model.learn(model.n_steps_per_epoch)
    out = capsys.readouterr().out  # SB3's logger: its stdout output at verbose=1
    for phase in ("tokenizer", "world_model", "actor_critic"):
        assert f"{phase}: 1/" in out, out


def test_quiet_model_prints_no_progress(monkeypatch, capsys):
    monkeypatch.setattr(iris_module, "PROGRESS_PRINT_SECONDS", 0.0)
    model = IRIS("CnnPolicy", ColorBoxEnv(), verbose=0, **tiny_iris_kwargs(image=True))
    model.learn(model.n_steps_per_epoch)
    captured = capsys.readouterr()
    assert "updates" not in captured.out + captured.err


def test_progress_lines_go_to_the_loggers_text_outputs(tmp_path, capsys):
    """A logger set by the user (here log.txt only) gets the lines; nothing is printed beside it."""
    model = IRIS("MlpPolicy", "CartPole-v1", verbose=1, **tiny_iris_kwargs(image=False))
    model.set_logger(configure(str(tmp_path), ["log"]))
    model.learn(model.n_steps_per_epoch)
    text = (tmp_path / "log.txt").read_text()
    assert "IRIS learn(50)" in text and "IRIS epoch 1/1 done" in text, text
    captured = capsys.readouterr()
    assert "IRIS" not in captured.out + captured.err


def test_imagine_before_learn_uses_the_replay():
    model = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    rng = np.random.default_rng(0)
    for step in range(12):
        model.replay_buffer.add(rng.normal(size=(1, 4)).astype(np.float32), [step % 2], [1.0], [step == 11], [False])
    rollout = model.imagine(3)
    assert rollout.actions.shape == (3, model.imagination_horizon)
