"""Do two versions of the code train to exactly the same parameters? (Behaviour-preserving refactors.)

Trains the tiny test configurations (``tests/conftest.py``: MlpPolicy on CartPole, CnnPolicy on a 16x16 image env)
for a few epochs, with the token cache and the merged last token each on and off, and saves every state dict
(policy and the three optimisers). Two saved runs are then compared tensor by tensor with ``torch.equal``.

Usage (one process at a time; ``--code`` is the repository whose ``sb3_iris`` is imported)::

    OMP_NUM_THREADS=1 python benchmarks/refactor_equivalence.py train --code /path/to/old --out /tmp/eq_old
    OMP_NUM_THREADS=1 python benchmarks/refactor_equivalence.py train --code /path/to/new --out /tmp/eq_new
    python benchmarks/refactor_equivalence.py compare /tmp/eq_old /tmp/eq_new

Each command prints JSON; ``compare`` exits with 1 when any tensor differs.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]

# name -> (image policy, IRIS overrides). The configurations of tests/conftest.py's tiny_iris_kwargs.
CONFIGS: dict[str, tuple[bool, dict[str, Any]]] = {
    "mlp_cache_merge": (False, dict(use_token_cache=True, merge_last_token=True)),
    "mlp_cache_nomerge": (False, dict(use_token_cache=True, merge_last_token=False)),
    "mlp_nocache_merge": (False, dict(use_token_cache=False, merge_last_token=True, reconstruction_cache_gb=0.0)),
    "mlp_nocache_nomerge": (False, dict(use_token_cache=False, merge_last_token=False, reconstruction_cache_gb=0.0)),
    "cnn_cache_merge": (True, dict(use_token_cache=True, merge_last_token=True)),
    "cnn_cache_nomerge": (True, dict(use_token_cache=True, merge_last_token=False)),
    "cnn_nocache_merge": (True, dict(use_token_cache=False, merge_last_token=True, reconstruction_cache_gb=0.0)),
    "cnn_nocache_nomerge": (True, dict(use_token_cache=False, merge_last_token=False, reconstruction_cache_gb=0.0)),
    # The caches kept across epochs once the tokenizer stops training.
    "cnn_tokenizer_stops": (True, dict(tokenizer_stop_after_epochs=1)),
    # The one-pass-per-step world model.
    "mlp_parallel_observations": (False, dict(parallel_observations=True)),
}
TIMESTEPS = 150  # 3 epochs of 50 steps
SEED = 3


def train(code: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """Train every configuration with the ``sb3_iris`` of ``code`` and save the state dicts under ``out``.

    :param code: repository root whose ``sb3_iris`` is imported
    :param out: folder for one ``<config>.pt`` file per configuration
    :return: what was trained, with which package
    """
    sys.path.insert(0, str(code))
    sys.path.insert(1, str(REPOSITORY / "tests"))
    import gymnasium as gym
    import torch
    from conftest import ColorBoxEnv, tiny_iris_kwargs

    import sb3_iris

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    for name, (image, overrides) in CONFIGS.items():
        overrides = dict(overrides)
        kwargs = tiny_iris_kwargs(image)
        if overrides.pop("parallel_observations", False):
            kwargs["policy_kwargs"]["world_model_kwargs"]["parallel_observations"] = True
        kwargs.update(overrides)
        env = ColorBoxEnv(size=16) if image else gym.make("CartPole-v1")
        model = sb3_iris.IRIS("CnnPolicy" if image else "MlpPolicy", env, seed=SEED, **kwargs)
        model.learn(TIMESTEPS)
        torch.save(model.get_parameters(), out / f"{name}.pt")
    return {"code": str(code), "package": sb3_iris.__file__, "out": str(out), "configs": list(CONFIGS)}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Tensors and other leaves of nested dicts and lists, by dotted path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix}.{i}").items()}
    return {prefix: value}


def compare(first: pathlib.Path, second: pathlib.Path) -> dict[str, Any]:
    """Compare the saved runs of two ``train`` calls, every tensor with ``torch.equal``.

    :return: per configuration the number of tensors compared and the names of those that differ
    """
    import torch

    report: dict[str, Any] = {"equal": True, "configs": {}}
    for name in CONFIGS:
        a = _flatten(torch.load(first / f"{name}.pt", weights_only=False), name)
        b = _flatten(torch.load(second / f"{name}.pt", weights_only=False), name)
        differing = sorted(set(a) ^ set(b))
        tensors = 0
        for key in sorted(set(a) & set(b)):
            if isinstance(a[key], torch.Tensor):
                tensors += 1
                same = isinstance(b[key], torch.Tensor) and a[key].shape == b[key].shape and torch.equal(a[key], b[key])
            else:
                same = a[key] == b[key]
            if not same:
                differing.append(key)
        report["configs"][name] = {"tensors": tensors, "exactly_equal": not differing, "differing": differing[:20]}
        report["equal"] = report["equal"] and not differing
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train the tiny configurations and save their state dicts")
    train_parser.add_argument("--code", type=pathlib.Path, default=REPOSITORY, help="repository whose code to run")
    train_parser.add_argument("--out", type=pathlib.Path, required=True, help="folder for the saved state dicts")
    compare_parser = commands.add_parser("compare", help="compare two saved runs tensor by tensor")
    compare_parser.add_argument("first", type=pathlib.Path)
    compare_parser.add_argument("second", type=pathlib.Path)
    args = parser.parse_args()
    if args.command == "train":
        print(json.dumps(train(args.code.resolve(), args.out), indent=2))
        return
    report = compare(args.first, args.second)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["equal"] else 1)


if __name__ == "__main__":
    main()
