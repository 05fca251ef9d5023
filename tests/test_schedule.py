"""learn(n) costs in proportion to n; the published schedule at 100k; defaults by observation type; progress."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

import sb3_iris.iris as iris_module
from sb3_iris import IRIS
from sb3_iris.defaults import PRESET_HYPERPARAMETERS
from sb3_iris.progress import estimate_seconds_left, format_seconds, start_progress
from sb3_iris.schedule import PARTS, final_epochs, plan_epochs
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs

IRIS_YML = Path(__file__).resolve().parents[1] / "hyperparams" / "iris.yml"
# yml keys that are not IRIS constructor arguments (RL Zoo consumes them).
ZOO_KEYS = ("n_timesteps", "policy", "env_wrapper", "n_envs", "policy_kwargs")


def yml_entry(name: str) -> dict:
    return dict(yaml.safe_load(IRIS_YML.read_text())[name])


def learn_plan(model: IRIS, timesteps: int, steps_per_epoch: int):
    """The epoch plan ``learn(timesteps)`` would run now (and its warnings), without training."""
    return start_progress(model, timesteps, steps_per_epoch, False, iris_module.PROGRESS_PRINT_SECONDS).plan


def count_updates(model: IRIS) -> dict[str, int]:
    """Counts every optimiser step of each part (a post-step hook on the real optimisers)."""
    counts = dict.fromkeys(PARTS, 0)
    for part in PARTS:
        optimizer = getattr(model.policy, f"{part}_optimizer")

        def hook(optimizer, args, kwargs, part=part) -> None:
            counts[part] += 1

        optimizer.register_step_post_hook(hook)
    return counts


# ------------------------------------------------------------------------------------------------
# The schedule of learn(n)
# ------------------------------------------------------------------------------------------------


def test_final_epochs_int_is_a_count_float_a_fraction():
    assert final_epochs(100, 2) == 100
    assert final_epochs(0.2, 500) == 100
    assert final_epochs(0.2, 2) == 0  # learn(256) does not pay for a 100k run's tail
    assert final_epochs(0.2, 3) == 1  # 0.6 rounds half up
    assert final_epochs(0.05, 100) == 5 and final_epochs(0, 100) == 0


@pytest.mark.parametrize("bad", [-1, -0.1, float("nan"), "0.2", True])
def test_final_training_epochs_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="final_training_epochs"):
        IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False, final_training_epochs=bad))


def test_cost_of_learn_is_proportional_to_n():
    """Gradient updates per part, counted on the optimisers, for n and 2n: twice as many, collecting and final."""
    counted = {}
    for epochs in (5, 10):
        kwargs = tiny_iris_kwargs(image=False, final_training_epochs=0.2, world_model_start_after_epochs=1)
        model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
        counts = count_updates(model)
        model.learn(epochs * model.n_steps_per_epoch)
        assert model._n_epochs == epochs + final_epochs(0.2, epochs)
        counted[epochs] = counts
    # 5 + 1 and 10 + 2 epochs of 2 updates per part; the world model skips epoch 1 (its warm-up).
    assert counted[5] == {"tokenizer": 12, "world_model": 10, "actor_critic": 12}
    assert counted[10] == {"tokenizer": 24, "world_model": 22, "actor_critic": 24}


def test_learn_runs_the_epochs_of_its_plan():
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(image=False, final_training_epochs=0.5))
    counts = count_updates(model)
    plan = learn_plan(model, 7 * model.n_steps_per_epoch - 10, model.n_steps_per_epoch)
    model.learn(7 * model.n_steps_per_epoch - 10)
    assert (plan.collecting_epochs, plan.final_epochs) == (7, 4)  # 3.5 rounds half up
    assert model._n_epochs == plan.total_epochs
    assert counts == {part: plan.updates(part) for part in PARTS}


def test_atari_entry_gives_the_published_schedule_at_100k():
    """The atari entry: 500 collecting epochs of 200 steps + 100 training-only epochs, with the paper's warm-ups."""
    entry = yml_entry("atari")
    kwargs = {k: v for k, v in entry.items() if k not in ZOO_KEYS}
    # A 64x64 RGB env stands in for the wrapped Atari game: the schedule does not depend on the frames.
    model = IRIS(entry["policy"], ColorBoxEnv(size=64), device="cpu", **kwargs)
    plan = learn_plan(model, int(entry["n_timesteps"]), model.n_steps_per_epoch)
    assert (plan.collecting_epochs, plan.final_epochs, plan.total_epochs) == (500, 100, 600)
    assert {part: plan.updates(part) for part in PARTS} == {
        "tokenizer": (600 - 5) * 200,
        "world_model": (600 - 25) * 200,
        "actor_critic": (600 - 50) * 200,
    }
    # The entry spells out the constructor defaults of CnnPolicy: a plain IRIS("CnnPolicy", env) is the same.
    default = IRIS("CnnPolicy", ColorBoxEnv(size=64), device="cpu")
    for name, value in kwargs.items():
        assert getattr(default, name) == value, name
    # learn(256) on the published schedule: 2 collecting epochs, no final ones.
    with pytest.warns(UserWarning, match="never train"):
        assert learn_plan(model, 256, 200).total_epochs == 2


def test_unreachable_warm_up_warns_once_naming_the_values():
    kwargs = tiny_iris_kwargs(image=False, world_model_start_after_epochs=3, actor_critic_start_after_epochs=5)
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(2 * model.n_steps_per_epoch)
    messages = [str(w.message) for w in caught if "never train" in str(w.message)]
    assert len(messages) == 1, messages
    message = messages[0]
    expected = (
        "total_timesteps=100",
        "2 collecting epochs",
        "world_model_start_after_epochs=3",
        "actor_critic_start_after_epochs=5",
        "Collect at least 300 steps",
    )
    for text in expected:
        assert text in message, message
    assert "tokenizer_start_after_epochs" not in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.learn(5 * model.n_steps_per_epoch, reset_num_timesteps=False)  # epochs 3-7 reach every part
    assert not [w for w in caught if "never train" in str(w.message)]


# ------------------------------------------------------------------------------------------------
# Defaults by observation type
# ------------------------------------------------------------------------------------------------


def test_mlp_defaults_are_the_cartpole_entry_without_obs_scale():
    entry = yml_entry("CartPole-v1")
    policy_kwargs = eval(entry["policy_kwargs"])  # a Python expression, as RL Zoo reads it
    model = IRIS("MlpPolicy", "CartPole-v1", device="cpu")
    assert model.preset == "vector"
    for name, value in entry.items():
        if name not in ZOO_KEYS:
            assert getattr(model, name) == value, name
    del policy_kwargs["tokenizer_kwargs"]["obs_scale"]
    reference = IRIS("MlpPolicy", "CartPole-v1", device="cpu", policy_kwargs=policy_kwargs)
    for part in PARTS:
        assert getattr(model.policy, part).config == getattr(reference.policy, part).config, part


def test_cnn_defaults_are_published_and_published_is_one_argument_away():
    cnn = IRIS("CnnPolicy", ColorBoxEnv(size=64), device="cpu")
    assert cnn.preset == "published" and cnn.policy.world_model.config.num_layers == 10
    mlp = IRIS("MlpPolicy", "CartPole-v1", device="cpu", preset="published")
    for name, value in PRESET_HYPERPARAMETERS["published"].items():
        assert getattr(mlp, name) == value, name
    config = mlp.policy.world_model.config
    assert (config.num_layers, config.embed_dim, config.embed_dropout) == (10, 256, 0.1)
    assert mlp.policy.actor_critic.config.recurrent


def test_explicit_arguments_and_policy_kwargs_win_over_the_preset():
    model = IRIS(
        "MlpPolicy",
        "CartPole-v1",
        device="cpu",
        gamma=0.9,
        policy_kwargs=dict(world_model_kwargs=dict(num_layers=1)),
    )
    assert model.gamma == 0.9 and model.learning_rate == 1e-3
    config = model.policy.world_model.config
    assert (config.num_layers, config.embed_dim) == (1, 64)  # merged key by key into the preset's sizes


@pytest.mark.parametrize(
    ("policy", "preset", "match"),
    [("MlpPolicy", "paper", "preset='paper' is not one of"), ("CnnPolicy", "vector", "needs MlpPolicy")],
)
def test_bad_preset_is_refused(policy, preset, match):
    env = "CartPole-v1" if policy == "MlpPolicy" else ColorBoxEnv()
    with pytest.raises(ValueError, match=match):
        IRIS(policy, env, preset=preset)


def test_saved_preset_values_survive_loading(tmp_path):
    model = IRIS("MlpPolicy", "CartPole-v1", device="cpu", seed=0)
    model.save(tmp_path / "m.zip")
    loaded = IRIS.load(tmp_path / "m.zip")
    assert loaded.preset == "vector" and loaded.learning_rate == 1e-3
    assert loaded.policy.world_model.config == model.policy.world_model.config


# ------------------------------------------------------------------------------------------------
# Progress
# ------------------------------------------------------------------------------------------------


def test_estimate_of_time_left_by_hand():
    plan = plan_epochs(
        1000, 100, 0, 0, dict(tokenizer=0, world_model=2, actor_critic=5), dict.fromkeys(PARTS, 10)
    )  # 10 epochs; tokenizer in 1-10, world model in 3-10, actor-critic in 6-10
    seconds, untimed = estimate_seconds_left(plan, 3, {"tokenizer": 0.1, "world_model": 0.2}, 2.0)
    # 7 epochs left: tokenizer 70 x 0.1 + world model 70 x 0.2 + 7 collections x 2; actor-critic not timed.
    assert seconds == pytest.approx(7 + 14 + 14) and untimed == ["actor_critic"]
    # In epoch 4, the world model at update 4: this epoch's tokenizer and collection are done.
    seconds, _ = estimate_seconds_left(plan, 3, {"tokenizer": 0.1, "world_model": 0.2}, 2.0, (4, "world_model", 4))
    assert seconds == pytest.approx(60 * 0.1 + 66 * 0.2 + 6 * 2.0)
    assert format_seconds(42) == "42s" and format_seconds(185) == "3m05s" and format_seconds(7620) == "2h07m"


def test_verbose_prints_the_schedule_and_epoch_progress(monkeypatch, capsys):
    monkeypatch.setattr(iris_module, "PROGRESS_PRINT_SECONDS", 0.0)
    model = IRIS("MlpPolicy", "CartPole-v1", verbose=1, **tiny_iris_kwargs(image=False))
    model.learn(2 * model.n_steps_per_epoch)
    out = capsys.readouterr().out  # SB3's logger: its stdout output at verbose=1
    lines = [line for line in out.splitlines() if line.startswith("IRIS")]
    schedule = lines[0]
    expected = (
        "learn(100)",
        "2 collecting epochs of 50 steps + 0 training-only",
        "tokenizer 2/epoch from epoch 1 (4)",
        "world model 1 layers x 32",
        "networks: tokenizer MlpTokenizer",
    )
    for text in expected:
        assert text in schedule, schedule
    assert any(line.startswith("IRIS epoch 2/2 done") and "left" in line for line in lines), out
    assert any("world_model: 1/2 updates" in line and "run: " in line for line in lines), out


def test_progress_bar_counts_epochs(capsys):
    pytest.importorskip("tqdm")
    model = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    model.learn(2 * model.n_steps_per_epoch, progress_bar=True)
    err = capsys.readouterr().err
    assert "2.00/2 epochs" in err and "left" in err, err


def test_quiet_learn_prints_nothing(capsys):
    model = IRIS("MlpPolicy", "CartPole-v1", **tiny_iris_kwargs(image=False))
    model.learn(model.n_steps_per_epoch)
    captured = capsys.readouterr()
    assert "IRIS" not in captured.err + captured.out
