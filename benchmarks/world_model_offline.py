"""How fast does the world model learn on a frozen tokenizer, with sequential or parallel observation prediction?

    OMP_NUM_THREADS=1 python -m benchmarks.world_model_offline --config benchmarks/probes/minatar_l6_fsq.yml \
        --world-model-updates 600 --eval-every 100 --modes on off

One question, without actor-critic or collection in the way: for an ``iris.yml``-style entry (``--config``), fill
the replay with ``--replay-steps`` steps of random play (the untrained actor), train the tokenizer for
``--tokenizer-updates`` updates and freeze it, then train only the world model, and every ``--eval-every`` updates
measure it on segments of *fresh* random play it never trained on (teacher-forced, as
:class:`sb3_iris.callbacks.WorldModelEvalCallback`: next-token accuracy, observation loss, reward and end accuracy),
and the accuracy on the tokens that change between frames. The same tokenizer weights serve every mode (``--modes on
off``: ``parallel_observations`` True / False). Also reports the fraction of fresh frames whose *every* token is
predicted right (a frame right in full), and seconds per world-model update. Prints one JSON line per evaluation,
then a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from benchmarks.imagination_throughput import REPO_HYPERPARAMS, build_model
from sb3_iris import IRIS
from sb3_iris.callbacks import WorldModelEvalCallback, segments_from_steps
from sb3_iris.envs import truncations_from_infos


def fresh_steps(model: IRIS, steps: int, seed: int) -> list[tuple[np.ndarray, ...]]:
    """``steps`` vector-env steps of uniform random play on the model's env, recorded as the eval callback does."""
    env = model.get_env()
    env.seed(seed)
    env.action_space.seed(seed)
    observations = env.reset()
    recorded = []
    for _ in range(steps):
        actions = np.array([env.action_space.sample() for _ in range(env.num_envs)])
        next_observations, rewards, dones, infos = env.step(actions)
        truncated = truncations_from_infos(infos, dones)
        recorded.append(
            (observations.copy(), actions.astype(np.int64), rewards.astype(np.float32), dones & ~truncated, dones)
        )
        observations = next_observations
    return recorded


@torch.no_grad()
def frame_accuracies(model: IRIS, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Accuracies of the argmax next-frame prediction on every real step after a segment's first.

    ``whole_frame_accuracy``: fraction of frames whose K tokens are all right; ``token_accuracy_after_first_frame``:
    per token (a check of the layout: it equals the eval callback's ``next_token_accuracy`` up to the first frame's
    tokens, which it leaves out); ``changed_token_accuracy`` / ``unchanged_token_accuracy``: per token, over the
    tokens that differ from (equal) the same position in the previous frame, i.e. what moved (the ball) and what
    did not; ``changed_token_fraction``.
    """
    policy, device = model.policy, model.device
    tokenizer, world_model = policy.tokenizer, policy.world_model
    observations = torch.as_tensor(batch["observations"], device=device)
    n, length = observations.shape[:2]
    tokens = tokenizer.tokenize(tokenizer.preprocess(observations.flatten(0, 1))).view(n, length, -1)
    actions = torch.as_tensor(batch["actions"], device=device)
    sequence = torch.cat([tokens, actions.unsqueeze(-1)], dim=-1).flatten(1)  # (n, L * (K + 1))
    output = world_model(sequence)
    k = world_model.config.tokens_per_obs
    if world_model.config.parallel_observations:
        predicted = output.logits_observations.argmax(-1)[:, :-1]  # (n, L - 1, K): frame t + 1 from action t
    else:
        # Per block, K outputs: obs tokens 0..K-2 predict tokens 1..K-1 of their own frame, the action token
        # predicts token 0 of the next frame.
        per_block = output.logits_observations.argmax(-1).view(n, length, k)
        predicted = torch.cat([per_block[:, :-1, k - 1 :], per_block[:, 1:, : k - 1]], dim=-1)  # (n, L - 1, K)
    mask = torch.as_tensor(batch["mask"], device=device)
    real_next = mask[:, 1:]
    right = predicted == tokens[:, 1:]
    changed = (tokens[:, 1:] != tokens[:, :-1])[real_next]
    right_real = right[real_next]
    return dict(
        whole_frame_accuracy=float(right_real.all(-1).float().mean()),
        token_accuracy_after_first_frame=float(right_real.float().mean()),
        changed_token_accuracy=float(right_real[changed].float().mean()),
        unchanged_token_accuracy=float(right_real[~changed].float().mean()),
        changed_token_fraction=float(changed.float().mean()),
    )


def train_and_measure(model: IRIS, segments: dict[str, np.ndarray], updates: int, every: int) -> list[dict[str, Any]]:
    """World-model-only training, measured on ``segments`` before the first update and every ``every`` updates."""
    callback = WorldModelEvalCallback(every_n_epochs=1)
    callback.init_callback(model)
    model.world_model_updates_per_epoch = every
    results, seconds = [], 0.0
    for done in range(0, updates + 1, every):
        train: dict[str, float] = {}
        if done:
            start = time.perf_counter()
            train = model.train_part("world_model")
            seconds += time.perf_counter() - start
        metrics = callback.evaluate_segments(**segments)
        entry = dict(
            world_model_updates=done,
            seconds=round(seconds, 1),
            **{key: round(value, 4) for key, value in frame_accuracies(model, segments).items()},
            **{key: round(value, 4) for key, value in metrics.items()},
            **{key.split("/")[-1]: round(value, 4) for key, value in train.items() if "world_model" in key},
        )
        results.append(entry)
        print(json.dumps(entry), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=REPO_HYPERPARAMS, help="hyperparameter file holding the entry")
    parser.add_argument("--env", default="MinAtar/Breakout-v1")
    parser.add_argument("--modes", choices=["on", "off"], nargs="+", default=["on", "off"])
    parser.add_argument("--replay-steps", type=int, default=5000)
    parser.add_argument("--tokenizer-updates", type=int, default=3000)
    parser.add_argument("--world-model-updates", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--fresh-steps", type=int, default=500, help="vector-env steps of fresh play (x n_envs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--save",
        default=None,
        metavar="PATH",
        help="save each mode's trained model as PATH_<mode>.zip (for benchmarks/frozen_world_model_probe.py)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    record: dict[str, Any] = dict(vars(args), runs={})
    tokenizer_state = None
    for mode in args.modes:
        torch.manual_seed(args.seed)
        model = build_model(args.env, mode == "on", args.replay_steps, args.seed, args.config)
        if tokenizer_state is None:
            model.tokenizer_updates_per_epoch = args.tokenizer_updates
            start = time.perf_counter()
            record["tokenizer"] = dict(model.train_part("tokenizer"), seconds=round(time.perf_counter() - start, 1))
            tokenizer_state = model.policy.tokenizer.state_dict()
        else:
            model.policy.tokenizer.load_state_dict(tokenizer_state)
        model.policy.tokenizer.eval()
        length = min(model.sequence_length, model.policy.world_model.config.max_blocks)
        steps = fresh_steps(model, args.fresh_steps, 10_000 + args.seed)
        segments = segments_from_steps(steps, length, 256, np.random.default_rng(args.seed))
        record["runs"][mode] = train_and_measure(model, segments, args.world_model_updates, args.eval_every)
        if args.save:
            model.save(f"{args.save}_{mode}.zip")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(record, file, indent=1)
    print(json.dumps({mode: runs[-1] for mode, runs in record["runs"].items()}))


if __name__ == "__main__":
    main()
