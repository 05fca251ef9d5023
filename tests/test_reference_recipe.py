"""The training recipe matches the IRIS reference where the networks alone cannot show it.

- Every decoded frame the actor-critic sees is clamped to the valid pixel range [-1, 1]: in imagination,
  at imagination burn-in, when acting, and at the collection burn-in.
- World-model segments are right-padded: position 0 is always a real frame, padding only follows real steps.
"""

from __future__ import annotations

import numpy as np
import torch

from sb3_iris import IRIS
from tests.conftest import ColorBoxEnv, tiny_iris_kwargs


def _model_with_out_of_range_decoder() -> IRIS:
    """A tiny image model whose decoder outputs lie far outside [-1, 1] (a shifted last-layer bias)."""
    model = IRIS("CnnPolicy", ColorBoxEnv(size=16, episode_length=5), seed=0, **tiny_iris_kwargs(image=True, burn_in=3))
    last_conv = [m for m in model.policy.tokenizer.decoder.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last_conv.bias.add_(3.0)
    return model


class _ActorInputRecorder:
    """Wraps ``actor_critic.forward`` and keeps the range of every observation batch it is given."""

    def __init__(self, model: IRIS) -> None:
        self.ranges: list[tuple[float, float]] = []
        actor_critic = model.policy.actor_critic
        original = actor_critic.forward

        def recording_forward(observations, *args, **kwargs):
            self.ranges.append((observations.min().item(), observations.max().item()))
            return original(observations, *args, **kwargs)

        actor_critic.forward = recording_forward

    def take(self) -> list[tuple[float, float]]:
        ranges, self.ranges = self.ranges, []
        return ranges


def _assert_in_range(ranges: list[tuple[float, float]], where: str) -> None:
    assert ranges, f"the actor-critic saw no frames {where}"
    low, high = min(r[0] for r in ranges), max(r[1] for r in ranges)
    assert low >= -1.0 and high <= 1.0, f"{where}: the actor-critic saw values in [{low}, {high}], outside [-1, 1]"


def test_decoder_outputs_outside_the_pixel_range_without_the_clamp():
    model = _model_with_out_of_range_decoder()
    tokenizer = model.policy.tokenizer
    tokens = torch.zeros(2, tokenizer.tokens_per_obs, dtype=torch.long)
    raw = tokenizer.decode(tokenizer.quantizer.embed(tokens))
    assert raw.max().item() > 1.5  # the setting of the other tests is a real out-of-range decoder
    clamped = tokenizer.decode_tokens(tokens)
    assert torch.equal(clamped, raw.clamp(-1, 1))


def test_actor_sees_clamped_frames_in_all_four_places():
    model = _model_with_out_of_range_decoder()
    model.learn(60)  # fills the replay (episodes of 5 steps) and trains once
    recorder = _ActorInputRecorder(model)

    # 1. Acting in the real env.
    obs = np.stack([ColorBoxEnv(size=16).reset(seed=i)[0] for i in range(3)])
    model.predict(obs, deterministic=True)
    _assert_in_range(recorder.take(), "when acting")

    # 2. Collection burn-in: the LSTM is fed the reconstructions of the ongoing episodes' last frames.
    model.replay_buffer.add(
        model._last_obs, np.zeros(1, dtype=np.int64), np.zeros(1), np.zeros(1, bool), np.zeros(1, bool)
    )
    model._burn_in_collection_state()
    _assert_in_range(recorder.take(), "at the collection burn-in")

    # 3 and 4. Imagination: burn-in on replay reconstructions, then the generated frames.
    output = model.imagine(6, keep_observations=True)
    _assert_in_range(recorder.take(), "in imagination (burn-in and generated frames)")
    assert output.observations is not None
    assert output.observations.min() >= -1 and output.observations.max() <= 1


def test_imagination_burn_in_frames_are_clamped_with_and_without_the_reconstruction_cache():
    for cache_gb in (0.0, 1.0):
        model = _model_with_out_of_range_decoder()
        model.tokenizer_cache.reconstructions.max_bytes = int(cache_gb * 1024**3)
        model.learn(60)
        batch = model.replay_buffer.sample_segments(5, model.burn_in + 1, "left")
        tokens = model.segment_tokens(batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
        frames = model.context_reconstructions(tokens, batch.env_indices, batch.time_indices, batch.mask_padding)
        real = torch.as_tensor(batch.mask_padding)
        assert frames[real].max() <= 1 and frames[real].min() >= -1
        assert frames[real].max() == 1  # the decoder's outputs above 1 were clamped, not absent


def test_world_model_trains_on_right_padded_segments():
    # Episodes of 3 steps and segments of 4: most segments are padded.
    env = ColorBoxEnv(size=16, episode_length=3)
    model = IRIS("CnnPolicy", env, seed=0, **tiny_iris_kwargs(image=True, world_model_updates_per_epoch=20))
    masks: list[torch.Tensor] = []
    world_model = model.policy.world_model
    original = world_model.compute_loss

    def recording_loss(obs_tokens, actions, rewards, ends, mask_padding):
        masks.append(mask_padding.clone())
        return original(obs_tokens, actions, rewards, ends, mask_padding)

    world_model.compute_loss = recording_loss
    model.learn(50)
    assert len(masks) == 20
    mask = torch.cat(masks).numpy()
    assert (~mask).any(), "no padded segment was sampled: the test would show nothing"
    assert mask[:, 0].all(), "a world-model segment started with padding"
    # Padding only after the real steps: the mask never turns True again once False.
    assert (np.diff(mask.astype(np.int8), axis=1) <= 0).all()
