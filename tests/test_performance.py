"""Every speed-up gives the results of the plain path (exactly, or within a stated tolerance)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sb3_iris import IRIS, imagination
from sb3_iris.imagination import OneTokenStepper, imagine_rollouts
from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig, actor_critic_loss, compute_lambda_returns
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig
from sb3_iris.performance import PerformanceOptions, autocast_context, cpu_supports_bf16, is_glibc
from sb3_iris.policies import _make_optimizer
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs

# bf16 keeps 8 bits of mantissa: losses of the same inputs agree to about 1%; we allow 5%.
BF16_LOSS_RTOL = 5e-2


def tiny_networks(num_actions: int = 3, max_blocks: int = 4):
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(
        ConvTokenizerConfig(
            resolution=16,
            base_channels=8,
            channel_multipliers=(1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(8,),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        )
    )
    world_model = WorldModel(
        WorldModelConfig(
            obs_vocab_size=32,
            num_actions=num_actions,
            tokens_per_obs=16,
            num_layers=2,
            num_heads=2,
            embed_dim=32,
            max_blocks=max_blocks,
        )
    )
    actor_critic = ActorCritic(
        ActorCriticConfig(num_actions=num_actions, observation_shape=(3, 16, 16), conv_channels=(8, 8), lstm_dim=32)
    )
    return tokenizer.eval(), world_model.eval(), actor_critic


def flat_parameters(model: IRIS) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.policy.parameters()])


def test_token_cache_gives_the_same_training_as_recomputing():
    """Same seed, cached vs recomputed tokens: identical parameters after several epochs of all three phases."""
    results = []
    for use_token_cache in (True, False):
        kwargs = tiny_iris_kwargs(image=True, use_token_cache=use_token_cache, seed=3)
        model = IRIS("CnnPolicy", ColorBoxEnv(), **kwargs)
        model.learn(3 * model.n_steps_per_epoch)
        results.append(flat_parameters(model))
    # Tokens are argmins over codebook distances: equal whenever no two codes are within float rounding of a frame's
    # code, so the world model then sees the same batches (the tokenizer's own batches do not use the cache).
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=1e-6)


def test_segment_tokens_cached_equal_recomputed():
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, seed=0))
    model.learn(model.n_steps_per_epoch)
    batch = model.replay_buffer.sample_segments(8, 5, "both")
    args = (batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
    model.tokenizer_cache.use_token_cache = False
    recomputed = model.segment_tokens(*args)
    model.tokenizer_cache.use_token_cache = True
    first = model.segment_tokens(*args)  # fills the cache
    second = model.segment_tokens(*args)  # served from the cache
    assert torch.equal(recomputed, first) and torch.equal(first, second)
    _, valid = model.tokenizer_cache.tokens.lookup(
        batch.env_indices[batch.mask_padding], batch.time_indices[batch.mask_padding]
    )
    assert valid.all()


def test_merge_last_token_imagination_equals_plain():
    """K passes per step (merged) vs K + 1 (plain), fixed seed, including cache re-priming (max_blocks=4, H=9)."""
    tokenizer, world_model, actor_critic = tiny_networks()
    context = torch.randint(0, 32, (4, 3, 16))
    mask = torch.ones(4, 3, dtype=torch.bool)
    outputs = []
    for merge in (False, True):
        torch.manual_seed(1)
        outputs.append(
            imagine_rollouts(
                tokenizer, world_model, actor_critic, context, mask, 9, keep_observations=True, merge_last_token=merge
            )
        )
    plain, merged = outputs
    assert torch.equal(plain.actions, merged.actions)
    assert torch.equal(plain.rewards, merged.rewards) and torch.equal(plain.ends, merged.ends)
    torch.testing.assert_close(plain.logits, merged.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.observations, merged.observations, rtol=1e-5, atol=1e-5)


def test_inverse_cdf_indices_equal_a_scan_of_the_cumulative_sums():
    """The first index whose running sum passes u * total, found by a plain loop, for hand-picked and random u."""
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.0, 1.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    uniforms = torch.tensor([[0.0], [0.5], [0.999999]])
    generator = torch.Generator().manual_seed(0)
    for u in [uniforms, torch.rand(3, 1, generator=generator), torch.rand(3, 1, generator=generator)]:
        fast = imagination.inverse_cdf_indices(probs, u)
        expected = []
        for row, threshold in zip(probs, u[:, 0]):
            running, index = 0.0, None
            for i, p in enumerate(row.tolist()):
                running += p
                if running > threshold.item() * row.sum().item():
                    index = i
                    break
            expected.append(index)
        assert fast.tolist() == expected
    assert imagination.inverse_cdf_indices(probs, uniforms).tolist() == [0, 2, 3]


def test_inverse_cdf_sampling_draws_the_softmax_distribution():
    """200k draws per row at temperature 1 and 2: frequencies within 0.005 of the softmax; zero-probability
    classes never drawn; temperature 0 is the argmax, as with torch.multinomial."""
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0], [0.0, float("-inf"), 3.0, 0.5]])
    for temperature in (1.0, 2.0):
        draws = imagination.sample_from_logits(logits.expand(200_000, 2, 4), temperature, inverse_cdf=True)
        for row in range(2):
            frequencies = torch.bincount(draws[:, row], minlength=4).float() / draws.shape[0]
            expected = torch.softmax(logits[row] / temperature, dim=-1)
            torch.testing.assert_close(frequencies, expected, atol=5e-3, rtol=0)
        assert not bool((draws[:, 1] == 1).any())
    assert torch.equal(imagination.sample_from_logits(logits, 0.0, inverse_cdf=True), logits.argmax(-1))


def test_inverse_cdf_switch_reaches_imagination_and_trains(monkeypatch):
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, inverse_cdf_sampling=True, seed=2))
    assert model.performance.inverse_cdf_sampling is True and model.dream_env.inverse_cdf_sampling is True
    calls = []
    original = imagination.inverse_cdf_indices

    def counting(probs, uniforms):
        calls.append(probs.shape)
        return original(probs, uniforms)

    monkeypatch.setattr(imagination, "inverse_cdf_indices", counting)
    model.learn(2 * model.n_steps_per_epoch)
    assert calls, "imagination never drew through the inverse CDF"
    assert IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True)).dream_env.inverse_cdf_sampling is False


def test_reused_kv_cache_equals_fresh_cache():
    tokenizer, world_model, actor_critic = tiny_networks()
    context = torch.randint(0, 32, (2, 3, 16))
    mask = torch.ones(2, 3, dtype=torch.bool)
    cache = world_model.new_cache(2)
    runs = []
    for reuse in (None, cache, cache):
        torch.manual_seed(5)
        runs.append(imagine_rollouts(tokenizer, world_model, actor_critic, context, mask, 5, cache=reuse))
    for run in runs[1:]:
        assert torch.equal(run.actions, runs[0].actions)
        torch.testing.assert_close(run.values, runs[0].values)


def test_fused_optimizer_matches_plain():
    torch.manual_seed(0)
    reference = torch.nn.Linear(8, 4)
    fused_copy = torch.nn.Linear(8, 4)
    fused_copy.load_state_dict(reference.state_dict())
    plain = _make_optimizer(torch.optim.Adam, reference.parameters(), 1e-2, fused=False, extra={})
    fused = _make_optimizer(torch.optim.Adam, fused_copy.parameters(), 1e-2, fused=True, extra={})
    x = torch.randn(16, 8)
    for _ in range(5):
        for module, optimizer in ((reference, plain), (fused_copy, fused)):
            optimizer.zero_grad()
            module(x).pow(2).mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), fused_copy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_channels_last_tokenizer_equals_contiguous():
    tokenizer, _, actor_critic = tiny_networks()
    frames = tokenizer.preprocess(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8))
    reference = tokenizer.decode(tokenizer.encode(frames).z_quantized)
    reference_logits = actor_critic(reference, actor_critic.initial_state(4)).logits
    tokenizer.to(memory_format=torch.channels_last)
    actor_critic.to(memory_format=torch.channels_last)
    encoded = tokenizer.encode(frames.contiguous(memory_format=torch.channels_last))
    channels_last = tokenizer.decode(encoded.z_quantized)
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        actor_critic(channels_last, actor_critic.initial_state(4)).logits, reference_logits, rtol=1e-4, atol=1e-5
    )


@pytest.mark.skipif(not cpu_supports_bf16(), reason="this CPU has no bf16 instructions")
def test_bf16_autocast_losses_match_fp32():
    """Tokenizer, world-model and actor-critic losses under bf16 autocast are within BF16_LOSS_RTOL of fp32."""
    tokenizer, world_model, actor_critic = tiny_networks()
    frames = tokenizer.preprocess(torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8))
    obs_tokens = torch.randint(0, 32, (4, 4, 16))
    actions = torch.randint(0, 3, (4, 4))
    rewards = torch.randn(4, 4)
    ends = torch.zeros(4, 4, dtype=torch.bool)
    mask = torch.ones(4, 4, dtype=torch.bool)
    context = torch.randint(0, 32, (4, 3, 16))
    context_mask = torch.ones(4, 3, dtype=torch.bool)

    def losses() -> dict[str, float]:
        tokenizer_losses, _ = tokenizer.compute_loss(frames)
        world_model_losses = world_model.compute_loss(obs_tokens, actions, rewards, ends, mask)
        torch.manual_seed(2)
        rollout = imagine_rollouts(tokenizer, world_model, actor_critic, context, context_mask, 4)
        returns = compute_lambda_returns(
            rollout.rewards.float(), rollout.values.detach().float(), rollout.ends, 0.99, 0.95
        )
        value_loss = actor_critic_loss(
            rollout.logits[:, :-1], rollout.actions[:, :-1], rollout.values[:, :-1], returns[:, :-1], 0.001
        ).value
        return {
            "tokenizer": tokenizer_losses.total.item(),
            "world_model": world_model_losses.total.item(),
            "first_action_logits": rollout.logits[:, 0].float(),
            "value": value_loss.item(),
        }

    reference = losses()
    with autocast_context(PerformanceOptions(mixed_precision=True), "cpu"):
        mixed = losses()
    for name in ("tokenizer", "world_model"):
        assert mixed[name] == pytest.approx(reference[name], rel=BF16_LOSS_RTOL), name
    # The first imagined action is chosen from the same start frame: logits agree to bf16 precision.
    torch.testing.assert_close(mixed["first_action_logits"], reference["first_action_logits"], rtol=0.05, atol=0.05)
    assert np.isfinite(mixed["value"])


def test_performance_options_resolve_per_device():
    cpu = PerformanceOptions().resolved(torch.device("cpu"))
    assert cpu.mixed_precision is False and cpu.channels_last is True and cpu.merge_last_token is True
    forced = PerformanceOptions(
        mixed_precision=False, channels_last=True, merge_last_token=False, fused_optimizers=False
    )
    resolved = forced.resolved(torch.device("cpu"))
    assert (resolved.mixed_precision, resolved.channels_last, resolved.merge_last_token, resolved.fused_optimizers) == (
        False,
        True,
        False,
        False,
    )
    assert cpu.tune_cpu_allocator is is_glibc()
    assert PerformanceOptions(tune_cpu_allocator=False).resolved(torch.device("cpu")).tune_cpu_allocator is False
    assert PerformanceOptions().resolved(torch.device("cuda")).tune_cpu_allocator is False


# Runs in a fresh interpreter: the allocator switch is process-wide and cannot be undone, so the "off" half
# must run before anything in the process turns it on.
CPU_ALLOCATOR_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    sys.path.insert(0, sys.argv[1])
    from sb3_iris import IRIS
    from sb3_iris.performance import configure_cpu_allocator
    from tests.conftest import ColorBoxEnv, tiny_iris_kwargs

    torch.set_num_threads(1)

    def faults_of_big_allocations():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(10):
            torch.ones(16 * 1024 * 1024)  # 64 MiB, freed at once
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    def trained_parameters(tune):
        model = IRIS("CnnPolicy", ColorBoxEnv(), seed=3, **tiny_iris_kwargs(image=True, tune_cpu_allocator=tune))
        model.learn(2 * model.n_steps_per_epoch)
        return [p.detach().clone() for p in model.policy.parameters()]

    faults_default = faults_of_big_allocations()
    plain = trained_parameters(False)
    faults_still_default = faults_of_big_allocations()
    tuned = trained_parameters(True)
    faults_tuned = [faults_of_big_allocations() for _ in range(3)]
    print(json.dumps(dict(
        faults_default=faults_default,
        faults_still_default=faults_still_default,
        faults_tuned=faults_tuned,
        configured_again=configure_cpu_allocator(),
        identical=all(torch.equal(a, b) for a, b in zip(plain, tuned)),
    )))
    """
)


@pytest.mark.skipif(not is_glibc(), reason="the CPU allocator switch uses glibc's mallopt")
def test_cpu_allocator_switch_stops_page_faults_and_changes_no_result():
    """tune_cpu_allocator=False leaves malloc alone; True makes freed big tensors reusable without page faults;
    training is identical either way."""
    repo_root = Path(__file__).resolve().parents[1]
    completed = subprocess.run(
        [sys.executable, "-c", CPU_ALLOCATOR_SCRIPT, str(repo_root)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo_root,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    # Plain glibc maps and zeroes 64 MiB (16384 pages) for every one of the 10 allocations, every time; the tuned
    # heap touches new pages only while it grows to its working size (the first round), then reuses them
    # (measured: [130954, 0, 0]).
    assert result["faults_default"] > 10 * 16384 * 0.9
    assert result["faults_still_default"] > 10 * 16384 * 0.9
    assert result["faults_tuned"][-1] < 16384
    assert result["configured_again"] is True
    assert result["identical"] is True


def test_switches_reach_the_model():
    model = IRIS(
        "CnnPolicy",
        ColorBoxEnv(),
        **tiny_iris_kwargs(image=True, merge_last_token=False, channels_last=True, fused_optimizers=False),
    )
    assert model.performance.merge_last_token is False
    assert model.policy.tokenizer.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not model.policy.world_model_optimizer.defaults.get("fused")
    model.learn(model.n_steps_per_epoch)


def test_reconstruction_cache_gives_the_same_training_as_decoding():
    """Burn-in reconstructions from the per-epoch cache vs decoded for every update: identical parameters."""
    results = []
    for cache_gb in (1.0, 0.0):
        kwargs = tiny_iris_kwargs(
            image=True, reconstruction_cache_gb=cache_gb, seed=4, actor_critic_updates_per_epoch=4
        )
        model = IRIS("CnnPolicy", ColorBoxEnv(), **kwargs)
        model.learn(3 * model.n_steps_per_epoch)
        results.append(flat_parameters(model))
        if cache_gb > 0:
            assert len(model.tokenizer_cache.reconstructions) > 0
    # The cache decodes the frames it misses in batches of other sizes than the plain path, and a CPU's convolution
    # kernels round differently by batch shape (reconstructions within 1e-5, see below): the actor-critic then
    # trains on inputs equal up to float rounding, and its parameters agree to float rounding, not bit for bit.
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_reconstruction_cache_respects_its_budget_and_returns_decoded_frames():
    from sb3_iris.caches import ReconstructionCache

    frame_bytes = 3 * 16 * 16 * 4
    cache = ReconstructionCache(max_bytes=10 * frame_bytes, device=torch.device("cpu"))
    frames = torch.randn(16, 3, 16, 16)
    env_indices = np.zeros(16, dtype=np.int64)
    time_indices = np.arange(16)
    cache.store(env_indices, time_indices, frames)
    assert len(cache) == 10 and cache.nbytes <= 10 * frame_bytes
    slots, found = cache.lookup(env_indices, time_indices)
    assert found[:10].all() and not found[10:].any()
    assert torch.equal(cache.gather(slots[:10]), frames[:10])
    cache.clear()
    assert not cache.lookup(env_indices, time_indices)[1].any()


def test_context_reconstructions_cached_equal_decoded():
    model = IRIS("CnnPolicy", ColorBoxEnv(), **tiny_iris_kwargs(image=True, seed=0))
    model.learn(model.n_steps_per_epoch)
    batch = model.replay_buffer.sample_segments(6, 3, "left")
    tokens = model.segment_tokens(batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
    args = (tokens, batch.env_indices, batch.time_indices, batch.mask_padding)
    first = model.context_reconstructions(*args)  # decodes and fills the cache
    second = model.context_reconstructions(*args)  # from the cache
    model.tokenizer_cache.reconstructions.max_bytes = 0
    plain = model.context_reconstructions(*args)
    # The cache returns exactly what it stored; decoding a batch of another size rounds differently (the
    # convolution kernels a CPU picks depend on the batch shape): float tolerance against the plain path.
    assert torch.equal(second, first)
    torch.testing.assert_close(first, plain, rtol=1e-5, atol=1e-5)


def test_one_token_pass_equals_cached_pass():
    """The static-shape one-token pass gives the dynamic cached pass's logits at every position (action and
    observation tokens, across two blocks) and leaves the same keys and values in the cache."""
    _, world_model, _ = tiny_networks(max_blocks=3)
    world_model.eval()
    k = world_model.config.tokens_per_obs
    torch.manual_seed(1)
    obs = torch.randint(0, world_model.config.obs_vocab_size, (2, 2, k))
    actions = torch.randint(0, world_model.config.num_actions, (2, 2))
    sequence = torch.cat([obs, actions.unsqueeze(-1)], dim=-1).flatten(1)  # (B, 2 * (K + 1))
    plain_cache, static_cache = world_model.new_cache(2), world_model.new_cache(2)
    stepper = OneTokenStepper(world_model)
    with torch.no_grad():
        for position in range(sequence.shape[1]):
            token = sequence[:, position : position + 1]
            plain = world_model(token, plain_cache)
            logits_obs, logits_rewards, logits_ends = stepper(token, static_cache)
            if plain.logits_observations.shape[1]:
                torch.testing.assert_close(logits_obs, plain.logits_observations[:, -1], rtol=1e-5, atol=1e-5)
            if plain.logits_rewards.shape[1]:
                torch.testing.assert_close(logits_rewards, plain.logits_rewards[:, -1], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(logits_ends, plain.logits_ends[:, -1], rtol=1e-5, atol=1e-5)
    assert static_cache.size == plain_cache.size == sequence.shape[1]
    size = plain_cache.size
    torch.testing.assert_close(static_cache.keys[..., :size, :], plain_cache.keys[..., :size, :], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        static_cache.values[..., :size, :], plain_cache.values[..., :size, :], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_one_token_stepper_imagination_equals_plain(compiled):
    """Imagination through the static one-token stepper (eager, or traced by torch.compile) gives the plain
    cached imagination's actions, rewards and ends with the same seed (re-priming included: horizon > context)."""
    tokenizer, world_model, actor_critic = tiny_networks(max_blocks=4)
    world_model.eval()
    tokenizer.eval()
    context = torch.randint(0, 32, (3, 3, 16), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(3, 3, dtype=torch.bool)
    stepper = OneTokenStepper(world_model, compile=compiled, backend="aot_eager")
    outputs = []
    for step_with in (None, stepper):
        torch.manual_seed(5)
        outputs.append(
            imagine_rollouts(tokenizer, world_model, actor_critic, context, mask, horizon=6, stepper=step_with)
        )
    plain, static = outputs
    assert torch.equal(plain.actions, static.actions)
    assert torch.equal(plain.rewards, static.rewards)
    assert torch.equal(plain.ends, static.ends)
    torch.testing.assert_close(plain.logits, static.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain.values, static.values, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a C++ compiler")
def test_compile_imagination_trains_like_the_plain_path():
    """IRIS(compile_imagination=True) (inductor-compiled one-token pass) trains to the plain path's parameters."""
    parameters = []
    for compile_imagination in (False, True):
        model = IRIS(
            "CnnPolicy", ColorBoxEnv(), seed=4, **tiny_iris_kwargs(image=True, compile_imagination=compile_imagination)
        )
        assert (model.dream_env.stepper is not None) is compile_imagination
        model.learn(2 * model.n_steps_per_epoch)
        parameters.append([p.detach().clone() for p in model.policy.actor_critic.parameters()])
    for plain, compiled in zip(*parameters):
        torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-5)
