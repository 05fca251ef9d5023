"""Does a tokenizer keep MinAtar Breakout's ball and paddle, and are its codes local? Prints JSON.

    OMP_NUM_THREADS=1 python -m benchmarks.tokenizer_objects --updates 600 --foreground-weight 20
    OMP_NUM_THREADS=1 python -m benchmarks.tokenizer_objects --updates 1500 --local-patches --vocab-size 512 \
        --embed-dim 16

Trains the ``ConvTokenizer`` of the shared MinAtar entry of ``hyperparams/iris.yml`` (16x16 frames, 16 tokens, unless
``--image-size`` / ``--channel-multipliers`` say otherwise; the options override its codebook, commitment weight,
loss weighting and architecture) on ``--train-frames`` (3,000) frames of random Breakout play
(``--catcher-probability``: partly a scripted catcher's, which reaches later frames), then, on the next 1,000 frames,
reports:

- ``frames_exact``: fraction of frames whose every pixel decodes to its true colour (the nearest of the colours
  that occur in the frames: a faint smudge on the background still counts as background);
  ``frames_exact_by_ball_row``: the same for the frames whose ball is in each image row (-1: no ball seen), because
  the rows next to the paddle and the bricks are where the ball bounces;
- ``paddle_right`` / ``ball_right``: fraction of frames whose reconstruction has the paddle (the ball) in the
  true column (ball: also right when there is none and none is drawn); ``ball_right_where_present``: the same
  over the frames that have a ball;
- ``non_majority_fraction``: fraction of token instances whose code is not the most common code of their
  patch's pixel content (0: a patch's code depends on that patch only; the published encoder's receptive field
  spans the frame, so its codes also encode the rest);
- ``codes_used`` and ``codes_shared`` (codes that stand for more than one patch content).
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benchmarks.frozen_world_model_probe import ball_columns, ball_mask, paddle_columns, paddle_row
from benchmarks.imagination_throughput import entry_kwargs
from sb3_iris.minatar import MinAtarImageWrapper
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig


def random_frames(n: int, seed: int, image_size: int = 16, catcher_probability: float = 0.0) -> torch.Tensor:
    """``n`` frames ``(n, 3, image_size, image_size)`` uint8 of MinAtar Breakout play: uniform random actions, or with
    probability ``catcher_probability`` per step the scripted catcher's (``guided_collection_probe.catcher_action``),
    which keeps the ball and so reaches the later frames (fewer bricks) that random play never shows."""
    from benchmarks.probes.guided_collection_probe import catcher_action

    env = MinAtarImageWrapper(gym.make("MinAtar/Breakout-v1"), cell_size=1, image_size=image_size)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    frames = []
    observation, _ = env.reset(seed=seed)
    for _ in range(n):
        frames.append(observation)
        if rng.random() < catcher_probability:
            action = catcher_action(env.unwrapped.game.env)
        else:
            action = env.action_space.sample()
        observation, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            observation, _ = env.reset()
    return torch.as_tensor(np.stack(frames)).permute(0, 3, 1, 2)


def code_locality(frames: torch.Tensor, tokens: torch.Tensor, patch: int) -> dict[str, float]:
    """How far the codes are a function of their own patch's pixels (see the module docstring).

    :param frames: ``(n, C, size, size)`` uint8 frames
    :param tokens: ``(n, (size // patch) ** 2)`` their codes
    :param patch: pixels per token patch side
    """
    n, channels, size, _ = frames.shape
    side = size // patch
    patches = frames.reshape(n, channels, side, patch, side, patch).permute(0, 2, 4, 1, 3, 5).reshape(n, side**2, -1)
    codes_by_content: dict[bytes, collections.Counter] = collections.defaultdict(collections.Counter)
    for frame_patches, frame_tokens in zip(patches.numpy(), tokens.numpy()):
        for patch, token in zip(frame_patches, frame_tokens):
            codes_by_content[patch.tobytes()][int(token)] += 1
    total = sum(sum(counts.values()) for counts in codes_by_content.values())
    majority = sum(max(counts.values()) for counts in codes_by_content.values())
    contents_by_code: dict[int, set] = collections.defaultdict(set)
    for content, counts in codes_by_content.items():
        for code in counts:
            contents_by_code[code].add(content)
    return dict(
        patch_contents=len(codes_by_content),
        non_majority_fraction=round(1 - majority / total, 4),
        codes_used=len(contents_by_code),
        codes_shared=sum(len(contents) > 1 for contents in contents_by_code.values()),
    )


def exact_frames(truth: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per frame, whether every pixel decodes to its true colour.

    A decoded pixel's colour is the nearest (Euclidean, in RGB) of the colours that occur in ``truth`` (black, the
    palette and its mixes), so faint smudges on the background count as background and a wrong object does not.
    """
    colours = torch.unique(truth.permute(0, 2, 3, 1).reshape(-1, truth.shape[1]), dim=0)  # (C, 3)

    def nearest(frames: torch.Tensor) -> torch.Tensor:
        pixels = frames.permute(0, 2, 3, 1).reshape(-1, frames.shape[1])
        return torch.cdist(pixels, colours).argmin(-1).view(frames.shape[0], -1)

    return (nearest(truth) == nearest(reconstruction)).all(1)


def ball_rows(frames: torch.Tensor) -> np.ndarray:
    """Row of Breakout's ball (:func:`ball_mask`) in each frame ``(B, 3, H, W)``; -1 if none."""
    red = ball_mask(frames)
    rows = torch.arange(red.shape[1]).view(1, -1).expand(len(red), -1)
    return torch.where(red.any(2), rows, torch.full_like(rows, -1)).max(1).values.numpy()


def exactness_by_ball_row(truth: torch.Tensor, reconstruction: torch.Tensor) -> dict[str, dict[str, float]]:
    """For each image row the ball is in: frames there and the fraction reconstructed exactly (:func:`exact_frames`)."""
    exact, rows = exact_frames(truth, reconstruction).numpy(), ball_rows(truth)
    return {
        str(row): dict(frames=int(np.sum(rows == row)), exact=round(float(np.mean(exact[rows == row])), 4))
        for row in sorted(set(rows.tolist()))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--vocab-size", type=int, default=None, help="default: the entry's")
    parser.add_argument("--embed-dim", type=int, default=None, help="default: the entry's")
    parser.add_argument("--foreground-weight", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=None, help="commitment weight (default: the entry's)")
    parser.add_argument("--base-channels", type=int, default=None, help="default: the entry's")
    parser.add_argument(
        "--local-patches", action="store_true", help="also restarts unused codes (codebook only, not with FSQ)"
    )
    parser.add_argument(
        "--channel-multipliers",
        type=int,
        nargs="+",
        default=None,
        help="default: the entry's (1 2 2: 4x4-pixel patches; 1 2: 2x2-pixel patches, 64 tokens per frame)",
    )
    parser.add_argument(
        "--fsq-levels",
        type=int,
        nargs="+",
        default=None,
        help="finite scalar quantisation with these levels instead of the codebook (sets vocab size and embed dim)",
    )
    parser.add_argument("--image-size", type=int, default=16, help="frame side, the 10x10 grid centred (10: no border)")
    parser.add_argument("--train-frames", type=int, default=3000, help="frames of random play to train on")
    parser.add_argument(
        "--catcher-probability",
        type=float,
        default=0.0,
        help="per step, the scripted catcher's action instead of a random one (train and test frames; 0: random play)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    if not 0.0 <= args.catcher_probability <= 1.0:
        raise ValueError(f"--catcher-probability={args.catcher_probability} must be in [0, 1]")
    frames = random_frames(args.train_frames + 1000, args.seed, args.image_size, args.catcher_probability)
    train, test = frames[: args.train_frames], frames[args.train_frames :]
    settings = dict(entry_kwargs("MinAtar/Breakout-v1")[0]["policy_kwargs"]["tokenizer_kwargs"])
    multipliers = None if args.channel_multipliers is None else tuple(args.channel_multipliers)
    overrides = dict(
        vocab_size=args.vocab_size,
        embed_dim=args.embed_dim,
        beta=args.beta,
        channel_multipliers=multipliers,
        base_channels=args.base_channels,
    )
    settings.update({name: value for name, value in overrides.items() if value is not None})
    if args.fsq_levels:
        levels = tuple(args.fsq_levels)
        settings.update(fsq_levels=levels, vocab_size=int(np.prod(levels)), embed_dim=len(levels))
    settings.update(
        foreground_weight=args.foreground_weight,
        local_patches=args.local_patches,
        restart_unused_codes=args.local_patches and not args.fsq_levels,
    )
    config = ConvTokenizerConfig(resolution=args.image_size, **settings)
    tokenizer = ConvTokenizer(config)
    optimizer = torch.optim.Adam(tokenizer.parameters(), lr=args.learning_rate)
    start = time.perf_counter()
    for _ in range(args.updates):
        batch = train[torch.randint(0, len(train), (args.batch_size,))]
        losses, _ = tokenizer.compute_loss(tokenizer.preprocess(batch))
        optimizer.zero_grad()
        losses.total.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    tokenizer.eval()
    with torch.no_grad():
        truth = tokenizer.preprocess(test)
        tokens = tokenizer.tokenize(truth)
        reconstruction = tokenizer.decode_tokens(tokens)
    true_ball, drawn_ball = ball_columns(truth), ball_columns(reconstruction)
    row = paddle_row(args.image_size)
    record: dict[str, Any] = dict(vars(args), train_seconds=round(seconds, 1))
    record.update(vocab_size=config.vocab_size, embed_dim=config.embed_dim, beta=config.beta)  # as trained
    record.update(
        mse=round(float((reconstruction - truth).pow(2).mean()), 5),
        paddle_right=float(np.mean(paddle_columns(reconstruction, row) == paddle_columns(truth, row))),
        ball_right=float(np.mean((drawn_ball == true_ball) | (np.isnan(drawn_ball) & np.isnan(true_ball)))),
        frames_with_ball=float(np.mean(~np.isnan(true_ball))),
        ball_right_where_present=float(np.mean(drawn_ball[~np.isnan(true_ball)] == true_ball[~np.isnan(true_ball)])),
        frames_exact=float(exact_frames(truth, reconstruction).float().mean()),
        frames_exact_by_ball_row=exactness_by_ball_row(truth, reconstruction),
        tokens_per_frame=int(tokens.shape[1]),
        **code_locality(test, tokens, config.patch_size),
    )
    print(json.dumps(record))


if __name__ == "__main__":
    main()
