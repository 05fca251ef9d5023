"""Short real Pong run with the media callbacks (reconstructions, imagined rollouts), for looking at by eye.

Writes ``docs/media/pong_reconstructions.png`` (real frames on top, reconstructions below), TensorBoard
summaries under ``--tensorboard-log`` and imagined-rollout GIFs under ``--imagined-dir``; prints JSON.

Usage::

    python benchmarks/pong_media_run.py --steps 1600    # about 20 min on one busy CPU core
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from PIL import Image
from stable_baselines3.common.callbacks import CallbackList

from sb3_iris import IRIS
from sb3_iris.atari import make_iris_atari_env
from sb3_iris.callbacks import ImaginedRolloutCallback, ReconstructionCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--out", default="docs/media")
    parser.add_argument("--tensorboard-log", default="/tmp/pong_tb")
    parser.add_argument("--imagined-dir", default="/tmp/pong_imagined")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)

    env = make_iris_atari_env("PongNoFrameskip-v4", training=True, seed=0)
    model = IRIS(
        "CnnPolicy",
        env,
        n_steps_per_epoch=200,
        tokenizer_updates_per_epoch=40,
        world_model_updates_per_epoch=10,
        actor_critic_updates_per_epoch=2,
        tokenizer_batch_size=32,
        world_model_batch_size=8,
        actor_critic_batch_size=4,
        tokenizer_start_after_epochs=0,
        world_model_start_after_epochs=2,
        actor_critic_start_after_epochs=5,
        sequence_length=10,
        imagination_horizon=8,
        burn_in=4,
        final_training_epochs=0,
        learning_rate=3e-4,
        seed=0,
        tensorboard_log=args.tensorboard_log,
        policy_kwargs=dict(
            tokenizer_kwargs=dict(base_channels=32),
            world_model_kwargs=dict(num_layers=4, embed_dim=128, max_blocks=10),
            actor_critic_kwargs=dict(lstm_dim=128),
        ),
    )
    callback = CallbackList(
        [
            ReconstructionCallback(every_n_epochs=2, n_frames=8),
            ImaginedRolloutCallback(every_n_epochs=3, n_rollouts=2, save_dir=args.imagined_dir, file_format="gif"),
        ]
    )
    start = time.time()
    model.learn(args.steps, callback=callback)
    seconds = time.time() - start

    frames, _, _ = model.replay_buffer.sample_frames(8)
    with torch.no_grad():
        reconstructions = model.policy.reconstruct(torch.as_tensor(frames))
    reconstructions_uint8 = model.policy.tokenizer.to_uint8(reconstructions).cpu().numpy()
    top = np.concatenate(list(frames.transpose(0, 2, 3, 1)), axis=1)
    bottom = np.concatenate(list(reconstructions_uint8.transpose(0, 2, 3, 1)), axis=1)
    grid = np.concatenate([top, bottom], axis=0)
    image = Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST)
    image.save(os.path.join(args.out, "pong_reconstructions.png"))
    l1 = float((torch.as_tensor(frames).float() / 127.5 - 1 - reconstructions.float()).abs().mean())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "reconstruction_l1": l1,
                "epochs": model._n_epochs,
                "replay_steps": model.replay_buffer.n_steps,
            }
        )
    )


if __name__ == "__main__":
    main()
