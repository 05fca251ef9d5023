"""Training switches added for learning from pixels (each off by default, i.e. IRIS's behaviour).

- ``tokenizer_stop_after_epochs``: the tokenizer trains in no epoch after it; its tokens, and so the token cache,
  stay valid from then on.
- The per-epoch world-model diagnostics ``train/imagined_reward_per_step`` and ``rollout/reward_per_step``.
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
