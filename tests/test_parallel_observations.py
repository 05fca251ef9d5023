"""Parallel observation prediction (``world_model_kwargs=dict(parallel_observations=True)``, not in IRIS).

The action token of step t predicts all K tokens of frame t + 1 at once, so imagination is one transformer pass
per step. Shown here: the loss equals a direct cross-entropy on hand-built targets; the cached imagination step
gives the logits of a full pass, including re-priming; the loss learns a deterministic sequence; IRIS trains,
imagines, saves and loads with it; it refuses the compiled one-token stepper.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sb3_iris import IRIS
from sb3_iris.imagination import OneTokenStepper, prime_cache, world_model_step
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig, interleave_tokens
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs
from tests.test_imagination import ACTIONS, VOCAB, record_sampled_logits, tiny_world_model


def parallel_world_model(k: int, max_blocks: int = 4) -> WorldModel:
    torch.manual_seed(0)
    return tiny_world_model(k, max_blocks=max_blocks, parallel=True)


def test_parallel_loss_equals_direct_cross_entropy_on_next_frames():
    k, batch, length = 3, 4, 5
    world_model = parallel_world_model(k, max_blocks=length)
    obs = torch.randint(0, VOCAB, (batch, length, k))
    actions = torch.randint(0, ACTIONS, (batch, length))
    rewards = torch.randn(batch, length)
    ends = torch.zeros(batch, length, dtype=torch.bool)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False  # right padding
    losses = world_model.compute_loss(obs, actions, rewards, ends, mask)

    output = world_model(interleave_tokens(obs, actions))
    assert output.logits_observations.shape == (batch, length, k, VOCAB)
    # Direct: the action of step t predicts the K tokens of step t + 1, where step t + 1 is real.
    logits, labels = [], []
    for b in range(batch):
        for t in range(length - 1):
            if mask[b, t + 1]:
                logits.append(output.logits_observations[b, t])
                labels.append(obs[b, t + 1])
    expected = F.cross_entropy(torch.cat(logits), torch.cat(labels))
    torch.testing.assert_close(losses.observations, expected, rtol=1e-5, atol=1e-6)


def test_parallel_cached_steps_match_full_passes_and_reprime(monkeypatch):
    k, batch = 2, 3
    world_model = parallel_world_model(k, max_blocks=3).eval()  # max_tokens 9
    records = record_sampled_logits(monkeypatch)
    cache = world_model.new_cache(batch)
    current = torch.randint(0, VOCAB, (batch, k))
    reprimes = 0
    with torch.no_grad():
        prime_cache(world_model, cache, current)
        sequence = current.clone()  # what the cache holds
        for _ in range(7):
            needs_frame = sequence.shape[1] % (k + 1) == 0
            if sequence.shape[1] + (k if needs_frame else 0) + 1 > cache.max_tokens:
                reprimes += 1
                sequence, needs_frame = current.clone(), False
            if needs_frame:
                sequence = torch.cat([sequence, current], 1)
            records.clear()
            actions = torch.randint(0, ACTIONS, (batch,))
            step = world_model_step(world_model, cache, actions, current, True)
            sequence = torch.cat([sequence, actions[:, None]], 1)
            assert cache.size == sequence.shape[1] <= cache.max_tokens
            assert step.pending_tokens is None and step.next_tokens.shape == (batch, k)
            full = world_model(sequence)
            assert len(records) == 3  # reward, end, the whole next frame at once
            torch.testing.assert_close(records[0], full.logits_rewards[:, -1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(records[1], full.logits_ends[:, -1], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(records[2], full.logits_observations[:, -1], rtol=1e-5, atol=1e-5)
            current = step.next_tokens
    assert reprimes >= 2


def test_parallel_world_model_learns_a_deterministic_sequence():
    k = 4
    world_model = parallel_world_model(k, max_blocks=6)
    optimizer = torch.optim.Adam(world_model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(1)
    first = torch.randint(0, VOCAB, (64, 1, k), generator=generator)
    actions = torch.randint(0, ACTIONS, (64, 6), generator=generator)
    # Token i of the next frame = (5 * action + i) mod VOCAB: the action token's output alone determines it.
    frames = [first]
    for t in range(5):
        frames.append((5 * actions[:, t, None, None] + torch.arange(k).view(1, 1, k)) % VOCAB)
    obs = torch.cat(frames, 1)
    zeros = torch.zeros(64, 6)
    mask = torch.ones(64, 6, dtype=torch.bool)
    initial = world_model.compute_loss(obs, actions, zeros, zeros.bool(), mask).observations.item()
    for _ in range(300):
        losses = world_model.compute_loss(obs, actions, zeros, zeros.bool(), mask)
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    assert initial > 2.0 and losses.observations.item() < 0.1 * initial


def test_iris_trains_imagines_saves_and_loads_with_parallel_observations(tmp_path):
    kwargs = tiny_iris_kwargs(image=True)
    kwargs["policy_kwargs"]["world_model_kwargs"]["parallel_observations"] = True
    model = IRIS("CnnPolicy", ColorBoxEnv(size=16), seed=0, **kwargs)
    before = {n: p.detach().clone() for n, p in model.policy.world_model.named_parameters()}
    model.learn(100)
    changed = [n for n, p in model.policy.world_model.named_parameters() if not torch.equal(p, before[n])]
    assert changed
    k = model.policy.tokenizer.tokens_per_obs
    assert model.policy.world_model.head_observations[-1].out_features == k * model.policy.tokenizer.vocab_size
    rollout = model.imagine(5, keep_observations=True)
    assert rollout.observations.shape[:2] == (5, model.imagination_horizon)
    model.save(tmp_path / "model.zip")
    loaded = IRIS.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.world_model.config.parallel_observations
    obs = np.stack([ColorBoxEnv(size=16).reset(seed=i)[0] for i in range(4)])
    assert np.array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


def test_parallel_observations_refuse_the_one_token_stepper_and_bad_values():
    world_model = parallel_world_model(2).eval()
    cache = world_model.new_cache(1)
    current = torch.zeros(1, 2, dtype=torch.long)
    prime_cache(world_model, cache, current)
    with pytest.raises(ValueError, match="parallel_observations"):
        world_model_step(
            world_model, cache, torch.zeros(1, dtype=torch.long), current, True, stepper=OneTokenStepper(world_model)
        )
    kwargs = tiny_iris_kwargs(image=True, compile_imagination=True)
    kwargs["policy_kwargs"]["world_model_kwargs"]["parallel_observations"] = True
    with pytest.raises(ValueError, match="compile_imagination=True cannot be combined"):
        IRIS("CnnPolicy", ColorBoxEnv(size=16), **kwargs)
    with pytest.raises(ValueError, match="parallel_observations='yes'"):
        WorldModelConfig(parallel_observations="yes").validate()
