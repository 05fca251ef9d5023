"""Train IRIS on an Atari game from Python, save it, and evaluate it with the IRIS protocol.

    pip install "sb3-iris[atari]"
    python examples/atari.py PongNoFrameskip-v4                  # the published Atari 100k configuration
    python examples/atari.py BreakoutNoFrameskip-v4 --timesteps 20000
    python examples/atari.py PongNoFrameskip-v4 --tiny           # a smoke run: tiny networks, about a minute on CPU

Training uses the IRIS Atari preprocessing (``sb3_iris.atari.make_iris_atari_env``: 64x64 RGB, frame skip 4
with max-pool, up to 30 no-ops, life loss ends an episode, unclipped rewards, 20 000-frame limit) and the
constructor defaults, which are the published configuration (500 epochs of 200 steps for 100k steps, then 100
training-only epochs): that is days of compute on a GPU, not a CPU job. ``--timesteps`` shortens the collection;
``--final-epochs`` the training-only epochs at the end.

Evaluation follows ``sb3_iris.evaluate``: a separate env with the evaluation settings (one no-op at reset, no
episode end on life loss, 108 000-frame limit), actions sampled at temperature 0.5, and the human-normalised
score for the 26 Atari 100k games. The same evaluation from the command line::

    python -m sb3_iris.evaluate iris_PongNoFrameskip-v4.zip --env PongNoFrameskip-v4 --episodes 10
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from sb3_iris import IRIS
from sb3_iris.atari import make_iris_atari_env
from sb3_iris.evaluate import evaluate_model, summarize

# A configuration that runs in about a minute on a 2-core CPU: it checks the pipeline, it does not learn Pong.
TINY: dict[str, Any] = dict(
    n_steps_per_epoch=50,
    tokenizer_updates_per_epoch=2,
    world_model_updates_per_epoch=2,
    actor_critic_updates_per_epoch=2,
    tokenizer_batch_size=8,
    world_model_batch_size=4,
    actor_critic_batch_size=4,
    tokenizer_start_after_epochs=0,
    world_model_start_after_epochs=0,
    actor_critic_start_after_epochs=0,
    sequence_length=4,
    burn_in=2,
    imagination_horizon=3,
    final_training_epochs=0,
    policy_kwargs=dict(
        tokenizer_kwargs=dict(
            base_channels=8,
            channel_multipliers=(1, 1, 1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        ),
        world_model_kwargs=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=4),
        actor_critic_kwargs=dict(conv_channels=(8, 8, 8, 8), lstm_dim=32),
    ),
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("env_id", nargs="?", default="PongNoFrameskip-v4", help="a *NoFrameskip-v4 Atari id")
    parser.add_argument("--timesteps", type=int, default=None, help="env steps (default: 100000, or 150 with --tiny)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks and few updates: a quick smoke run")
    parser.add_argument("--final-epochs", type=int, default=None, help="training-only epochs after collection")
    parser.add_argument("--eval-episodes", type=int, default=None, help="evaluation games (default: 10, 1 if --tiny)")
    parser.add_argument(
        "--eval-max-steps", type=int, default=None, help="cut evaluation games after this many steps (--tiny: 100)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 if --tiny)"
    )
    parser.add_argument("--save-path", default=None, help="where to save the model (default: iris_<env_id>.zip)")
    parser.add_argument("--tensorboard-log", default=None, help="TensorBoard log folder")
    return parser.parse_args(argv)


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    timesteps = args.timesteps if args.timesteps is not None else (150 if args.tiny else 100_000)
    eval_episodes = args.eval_episodes if args.eval_episodes is not None else (1 if args.tiny else 10)
    eval_max_steps = args.eval_max_steps if args.eval_max_steps is not None else (100 if args.tiny else None)
    save_path = args.save_path or f"iris_{args.env_id}.zip"
    num_threads = args.num_threads if args.num_threads is not None else (1 if args.tiny else None)
    if num_threads is not None:
        torch.set_num_threads(num_threads)  # tiny networks: more threads only add overhead

    kwargs: dict[str, Any] = dict(TINY) if args.tiny else {}
    if args.final_epochs is not None:
        kwargs["final_training_epochs"] = args.final_epochs

    # Training env: the IRIS preprocessing with its training settings; Monitor inside (one episode = one game).
    env = make_iris_atari_env(args.env_id, training=True, seed=args.seed)
    model = IRIS(
        "CnnPolicy",
        env,
        seed=args.seed,
        device=args.device,
        verbose=1,
        tensorboard_log=args.tensorboard_log,
        **kwargs,
    )
    start = time.perf_counter()
    model.learn(total_timesteps=timesteps, log_interval=1)
    print(f"trained for {model.num_timesteps} steps in {time.perf_counter() - start:.1f} s")
    model.save(save_path)
    print(f"saved to {save_path}")
    env.close()

    # Evaluation: the saved model, a fresh env with the evaluation settings, temperature 0.5.
    model = IRIS.load(save_path, device=args.device)
    eval_env = make_iris_atari_env(args.env_id, training=False)
    result = evaluate_model(
        model, eval_env, eval_episodes, seed=args.seed + 1000, max_episode_steps=eval_max_steps, verbose=1
    )
    eval_env.close()
    summary = summarize(result, args.env_id, model=save_path)
    print(f"evaluation on {args.env_id}: {len(result.returns)} games, mean return {summary['mean_return']:.2f}")
    if any(result.truncated):
        print(f"({sum(result.truncated)} game(s) truncated (--eval-max-steps or the frame limit): no score)")
    elif summary["game"] is not None:
        print(f"human-normalised score ({summary['game']}): {summary['hns']:.4f}")
    return summary


if __name__ == "__main__":
    main()
