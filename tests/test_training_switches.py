"""Training switches added for learning from pixels (each off by default, i.e. IRIS's behaviour).

- ``tokenizer_stop_after_epochs``: the tokenizer trains in no epoch after it; its tokens, and so the token cache,
  stay valid from then on.
- The per-epoch world-model diagnostics ``train/imagined_reward_per_step`` and ``rollout/reward_per_step``.
- ``collect_epsilon_initial`` / ``collect_epsilon_decay_steps``: a linear fall of the collection epsilon.
- ``imagination_outcome_temperature``: the sampling temperature of the imagined rewards and ends.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sb3_iris import IRIS
from tests.conftest import ColorBoxEnv, recording_logger, tiny_iris_kwargs


def _tokenizer_state(model: IRIS) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.policy.tokenizer.state_dict().items()}


def test_tokenizer_trains_until_its_stop_epoch_only():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, tokenizer_stop_after_epochs=2))
    n = model.n_steps_per_epoch
    states = []
    for _ in range(4):
        model.learn(n, reset_num_timesteps=False)
        states.append(_tokenizer_state(model))
        phases = set(model.last_phase_seconds)
        assert phases == ({"tokenizer", "world_model", "actor_critic"} if model._n_epochs <= 2 else
                          {"world_model", "actor_critic"})  # fmt: skip
    changed = [any(not torch.equal(a[k], b[k]) for k in a) for a, b in zip(states, states[1:])]
    assert changed == [True, False, False]  # epoch 2 trained it; epochs 3 and 4 did not


def test_token_cache_stays_valid_after_the_tokenizer_stops():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, tokenizer_stop_after_epochs=1))
    model.learn(3 * model.n_steps_per_epoch)
    buffer = model.replay_buffer
    env_indices = np.zeros(model.n_steps_per_epoch, dtype=np.int64)
    time_indices = np.arange(model.n_steps_per_epoch)
    cached, valid = model.tokenizer_cache.tokens.lookup(env_indices, time_indices)
    assert valid.any(), "no tokens of the first epoch's frames stayed cached after the tokenizer stopped"
    frames = buffer.observations_at(env_indices[valid], time_indices[valid])
    recomputed = model.tokenizer_cache.tokenize(frames).cpu().numpy()
    assert np.array_equal(np.asarray(cached)[valid], recomputed)


def test_default_keeps_training_the_tokenizer_every_epoch():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True))
    assert model.tokenizer_stop_after_epochs is None
    model.learn(4 * model.n_steps_per_epoch)
    assert "tokenizer" in model.last_phase_seconds


@pytest.mark.parametrize("value", [-1, 2.5, "3"])
def test_tokenizer_stop_after_epochs_is_validated(value):
    with pytest.raises(ValueError, match=f"tokenizer_stop_after_epochs={value!r}"):
        IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, tokenizer_stop_after_epochs=value))


def test_imagined_and_real_reward_per_step_are_logged():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True))
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(2 * model.n_steps_per_epoch)
    last = writer.records[-1]
    # ColorBoxEnv rewards 1 for the action matching the colour: the real mean reward per step is in [0, 1].
    assert 0.0 <= last["rollout/reward_per_step"] <= 1.0
    assert -1.0 <= last["train/imagined_reward_per_step"] <= 1.0


def test_tokenizer_learning_rate_sets_only_the_tokenizers_optimiser():
    model = IRIS(
        "CnnPolicy",
        ColorBoxEnv(),
        seed=0,
        **tiny_iris_kwargs(image=True, learning_rate=1e-3, tokenizer_learning_rate=5e-3),
    )
    model.learn(2 * model.n_steps_per_epoch)
    policy = model.policy
    assert [group["lr"] for group in policy.tokenizer_optimizer.param_groups] == [5e-3]
    assert {group["lr"] for group in policy.world_model_optimizer.param_groups} == {1e-3}
    assert {group["lr"] for group in policy.actor_critic_optimizer.param_groups} == {1e-3}
    default = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, learning_rate=1e-3))
    default.learn(default.n_steps_per_epoch)
    assert default.tokenizer_learning_rate is None
    assert [group["lr"] for group in default.policy.tokenizer_optimizer.param_groups] == [1e-3]


@pytest.mark.parametrize("value", [0.0, -1e-3, float("nan")])
def test_tokenizer_learning_rate_is_validated(value):
    with pytest.raises(ValueError, match="tokenizer_learning_rate"):
        IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, tokenizer_learning_rate=value))


# --- actor_critic_epochs: several PPO-clipped passes over each imagined batch (not in IRIS) ---------------------


def _feed_forward_image_kwargs(**overrides):
    kwargs = tiny_iris_kwargs(image=True, **overrides)
    kwargs["policy_kwargs"]["actor_critic_kwargs"]["recurrent"] = False
    return kwargs


def test_clipped_loss_first_pass_has_the_reinforce_gradient():
    """With pi == pi_old the clipped surrogate's gradient is REINFORCE's with the same advantages."""
    from sb3_iris.nn.actor_critic import actor_critic_loss, clipped_actor_critic_loss

    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    values = torch.randn(6, requires_grad=True)
    actions, returns = torch.randint(0, 4, (6,)), torch.randn(6)
    old_log_probs = torch.log_softmax(logits.detach(), -1).gather(-1, actions[:, None]).squeeze(-1)
    clipped = clipped_actor_critic_loss(
        logits, actions, old_log_probs, values, returns, returns - values.detach(), 0.01, 0.2
    )
    clipped_grads = torch.autograd.grad(clipped.total, (logits, values))
    plain = actor_critic_loss(logits[None], actions[None], values[None], returns[None], 0.01)
    plain_grads = torch.autograd.grad(plain.total, (logits, values))
    for clipped_grad, plain_grad in zip(clipped_grads, plain_grads):
        torch.testing.assert_close(clipped_grad, plain_grad)
    torch.testing.assert_close(clipped.value, plain.value)
    torch.testing.assert_close(clipped.entropy, plain.entropy)


def test_clipped_loss_gives_no_policy_gradient_past_the_clip_range():
    """A step whose ratio is past 1 + c with a positive advantage (or below 1 - c with a negative one) is clipped."""
    from sb3_iris.nn.actor_critic import clipped_actor_critic_loss

    logits = torch.tensor([[2.0, 0.0], [-2.0, 0.0]], requires_grad=True)
    actions = torch.tensor([0, 0])
    old_log_probs = torch.log(torch.tensor([0.5, 0.5]))  # ratios: 0.88 / 0.5 > 1.2 and 0.12 / 0.5 < 0.8
    advantages = torch.tensor([1.0, -1.0])
    losses = clipped_actor_critic_loss(
        logits, actions, old_log_probs, torch.zeros(2), torch.zeros(2), advantages, 0.0, 0.2
    )
    (gradient,) = torch.autograd.grad(losses.policy, logits)
    assert torch.count_nonzero(gradient) == 0
    inside = clipped_actor_critic_loss(
        logits, actions, old_log_probs, torch.zeros(2), torch.zeros(2), -advantages, 0.0, 0.2
    )
    (gradient,) = torch.autograd.grad(inside.policy, logits)
    assert torch.count_nonzero(gradient) > 0  # the other signs are not clipped


def test_actor_critic_epochs_take_epochs_times_minibatches_steps_per_update():
    kwargs = _feed_forward_image_kwargs(actor_critic_epochs=3, actor_critic_minibatches=2)
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **kwargs)
    optimizer = model.policy.actor_critic_optimizer
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(model.n_steps_per_epoch)
    steps = {int(state["step"]) for state in optimizer.state.values()}
    assert steps == {3 * 2 * model.actor_critic_updates_per_epoch}
    logged = [record for record in writer.records if "train/policy_loss" in record]
    for key in ("train/actor_critic_loss", "train/policy_loss", "train/value_loss", "train/entropy"):
        assert np.isfinite(logged[-1][key]), key


def test_actor_critic_epochs_default_is_iris_one_step_per_update():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True))
    assert model.actor_critic_epochs is None
    model.learn(model.n_steps_per_epoch)
    steps = {int(state["step"]) for state in model.policy.actor_critic_optimizer.state.values()}
    assert steps == {model.actor_critic_updates_per_epoch}


def test_actor_critic_epochs_refuse_a_recurrent_actor():
    with pytest.raises(ValueError, match="actor_critic_epochs=2 needs a feed-forward actor-critic"):
        IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, actor_critic_epochs=2))


@pytest.mark.parametrize(
    ("name", "value"),
    [("actor_critic_epochs", 0), ("actor_critic_epochs", 1.5), ("actor_critic_minibatches", 0),
     ("actor_critic_minibatches", 9), ("actor_critic_clip_range", 0.0), ("actor_critic_clip_range", float("nan"))],
)  # fmt: skip
def test_actor_critic_epoch_arguments_are_validated(name, value):
    # tiny batch: 4 imagined trajectories x (3 - 1) steps = 8 steps to split into minibatches
    with pytest.raises(ValueError, match=f"{name}="):
        IRIS("CnnPolicy", ColorBoxEnv(), **_feed_forward_image_kwargs(**{"actor_critic_epochs": 2, name: value}))


def _sampler_calls_of_one_epoch(model: IRIS, *keywords: str) -> list[tuple]:
    """Train ``model`` for one epoch and record every replay ``sample_segments`` call as
    ``(padding, *the values of keywords)``."""
    calls = []
    sample_segments = model.replay_buffer.sample_segments

    def recording_sample_segments(*args, **kwargs):
        calls.append((args[2], *(kwargs[keyword] for keyword in keywords)))
        return sample_segments(*args, **kwargs)

    model.replay_buffer.sample_segments = recording_sample_segments
    model.learn(model.n_steps_per_epoch)
    return calls


def test_recent_fractions_reach_the_world_model_and_imagination_samplers():
    model = IRIS(
        "CnnPolicy",
        ColorBoxEnv(),
        seed=0,
        **tiny_iris_kwargs(
            image=True, world_model_recent_fraction=0.5, actor_critic_recent_fraction=1.0, recent_window_steps=7
        ),
    )
    calls = _sampler_calls_of_one_epoch(model, "recent_fraction", "recent_time_steps")
    window = -(-7 // model.n_envs)
    assert ("right", 0.5, window) in calls and ("left", 1.0, window) in calls
    assert {(padding, fraction) for padding, fraction, _ in calls} == {("right", 0.5), ("left", 1.0)}


def test_event_fraction_reaches_the_world_model_sampler_only():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, world_model_event_fraction=0.5))
    calls = _sampler_calls_of_one_epoch(model, "event_fraction", "event_lead")
    assert set(calls) == {("right", 0.5, 0), ("left", 0.0, model.imagination_horizon)}


def test_actor_critic_event_fraction_reaches_the_imagination_sampler_with_the_horizon_as_lead():
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, actor_critic_event_fraction=0.5))
    calls = _sampler_calls_of_one_epoch(model, "event_fraction", "event_lead")
    assert set(calls) == {("right", 0.0, 0), ("left", 0.5, model.imagination_horizon)}


@pytest.mark.parametrize("part", ["world_model", "actor_critic"])
def test_event_fractions_are_validated_alone_and_with_the_recent_share(part):
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True))
    assert getattr(model, f"{part}_event_fraction") == 0.0
    for value in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=f"{part}_event_fraction="):
            IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, **{f"{part}_event_fraction": value}))
    with pytest.raises(ValueError, match=f"{part}_recent_fraction \\+ {part}_event_fraction"):
        IRIS(
            "CnnPolicy",
            ColorBoxEnv(),
            **tiny_iris_kwargs(image=True, **{f"{part}_recent_fraction": 0.6, f"{part}_event_fraction": 0.5}),
        )


def test_recent_fractions_default_to_iris_sampling():
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True))
    assert model.world_model_recent_fraction == 0.0 and model.actor_critic_recent_fraction == 0.0


@pytest.mark.parametrize(
    ("name", "value"),
    [("world_model_recent_fraction", -0.1), ("world_model_recent_fraction", 1.5),
     ("actor_critic_recent_fraction", float("nan")), ("recent_window_steps", 0), ("recent_window_steps", 2.5)],
)  # fmt: skip
def test_recent_sampling_arguments_are_validated(name, value):
    with pytest.raises(ValueError, match=f"{name}="):
        IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, **{name: value}))


def test_collect_epsilon_default_is_iris_constant():
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, collect_epsilon=0.05))
    for steps in (0, 10, 10**6):
        model.num_timesteps = steps
        assert model.current_collect_epsilon() == 0.05


def test_collect_epsilon_falls_linearly_from_its_initial_value():
    model = IRIS(
        "CnnPolicy",
        ColorBoxEnv(),
        **tiny_iris_kwargs(
            image=True, collect_epsilon=0.1, collect_epsilon_initial=1.0, collect_epsilon_decay_steps=100
        ),
    )
    expected = {0: 1.0, 25: 0.775, 50: 0.55, 100: 0.1, 1000: 0.1}
    for steps, epsilon in expected.items():
        model.num_timesteps = steps
        assert model.current_collect_epsilon() == pytest.approx(epsilon)


def test_annealed_epsilon_drives_the_random_actions_of_collection(monkeypatch):
    model = IRIS(
        "CnnPolicy",
        ColorBoxEnv(),
        seed=0,
        **tiny_iris_kwargs(
            image=True, collect_epsilon=0.0, collect_epsilon_initial=1.0, collect_epsilon_decay_steps=10
        ),
    )
    model._setup_learn(model.n_steps_per_epoch)
    model._collection_state = model.policy.initial_state(model.n_envs)

    def always_action_zero(observations, state, starts, temperature):
        return torch.zeros(len(observations), dtype=torch.long), state

    monkeypatch.setattr(model.policy, "act", always_action_zero)
    starts = np.zeros(model.n_envs, dtype=bool)
    model.num_timesteps = 10  # past the fall: epsilon 0, only the policy's action
    policy_only = np.concatenate([model._sample_collection_actions(starts) for _ in range(200)])
    assert set(policy_only.tolist()) == {0}
    model.num_timesteps = 0  # epsilon 1: every action uniformly random
    drawn = np.concatenate([model._sample_collection_actions(starts) for _ in range(200)])
    assert set(drawn.tolist()) == set(range(model.action_space.n))
    assert abs(float(np.mean(drawn == 0)) - 1 / model.action_space.n) < 0.1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [(dict(collect_epsilon_initial=1.5, collect_epsilon_decay_steps=10), "collect_epsilon_initial=1.5"),
     (dict(collect_epsilon_initial=float("nan"), collect_epsilon_decay_steps=10), "collect_epsilon_initial=nan"),
     (dict(collect_epsilon_initial=1.0), "collect_epsilon_decay_steps=0 must be >= 1"),
     (dict(collect_epsilon_decay_steps=-1), "collect_epsilon_decay_steps=-1")],
)  # fmt: skip
def test_collect_epsilon_schedule_is_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, **kwargs))


def test_imagination_outcome_temperature_reaches_imagination_and_survives_save_load(monkeypatch, tmp_path):
    import sb3_iris.iris as iris_module

    temperatures = []
    real_imagine = iris_module.imagine_rollouts

    def recording_imagine(*args, **kwargs):
        temperatures.append((kwargs["temperature"], kwargs["outcome_temperature"]))
        return real_imagine(*args, **kwargs)

    monkeypatch.setattr(iris_module, "imagine_rollouts", recording_imagine)
    kwargs = tiny_iris_kwargs(image=True, imagination_temperature=0.0, imagination_outcome_temperature=0.0)
    model = IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **kwargs)
    model.learn(model.n_steps_per_epoch)
    assert temperatures and set(temperatures) == {(0.0, 0.0)}
    model.save(tmp_path / "model.zip")
    assert IRIS.load(tmp_path / "model.zip").imagination_outcome_temperature == 0.0
    assert IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True)).imagination_outcome_temperature == 1.0
