"""Default hyperparameters by observation type ("presets").

``IRIS(policy, env)`` takes the arguments it is not given from a preset:

- ``"published"``: the Atari 100k configuration of the paper (Micheli et al., 2023, Appendix A), the default of
  ``CnnPolicy``. 500 collecting epochs of 200 steps and 100 training-only epochs at 100k steps, the published
  networks (policy defaults: 10-layer width-256 world model, 4.0M-parameter tokenizer, LSTM actor-critic).
- ``"vector"``: the tuned ``CartPole-v1`` entry of ``hyperparams/iris.yml``, the default of ``MlpPolicy``. Every part
  trains early and on small networks (an MLP tokenizer of 4 tokens, a 2-layer width-64 transformer without dropout,
  a feed-forward actor-critic), so that ``learn(10_000)`` fits a CPU in minutes. CartPole's observation scale is
  not part of it: the tokenizer standardises its inputs with the statistics of the replay instead.

``preset="published"`` gives the paper's schedule and networks to any policy. Arguments given explicitly always win,
and ``policy_kwargs`` are merged key by key into the preset's network sizes.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Union

__all__ = [
    "PRESETS",
    "PRESET_HYPERPARAMETERS",
    "PRESET_POLICY_KWARGS",
    "apply_preset",
    "merge_policy_kwargs",
    "resolve_preset",
]

PUBLISHED = "published"
VECTOR = "vector"
PRESETS = (PUBLISHED, VECTOR)

# The constructor arguments whose default depends on the preset (``None`` in the IRIS signature). Arguments with the
# same value in both presets (n_steps_per_epoch 200, tokenizer_updates_per_epoch 200, tokenizer_batch_size 256,
# actor_critic_batch_size 64, gae_lambda 0.95, ...) keep a plain default in the signature.
PRESET_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    PUBLISHED: dict(
        learning_rate=1e-4,
        world_model_updates_per_epoch=200,
        actor_critic_updates_per_epoch=200,
        world_model_batch_size=64,
        tokenizer_start_after_epochs=5,
        world_model_start_after_epochs=25,
        actor_critic_start_after_epochs=50,
        sequence_length=20,
        imagination_horizon=20,
        burn_in=20,
        gamma=0.995,
        ent_coef=0.001,
        # A fraction of the collecting epochs: the paper's 500 collecting epochs are followed by 100.
        final_training_epochs=0.2,
    ),
    VECTOR: dict(
        learning_rate=1e-3,
        world_model_updates_per_epoch=100,
        actor_critic_updates_per_epoch=50,
        world_model_batch_size=32,
        tokenizer_start_after_epochs=0,
        world_model_start_after_epochs=2,
        actor_critic_start_after_epochs=5,
        sequence_length=16,
        imagination_horizon=15,
        burn_in=5,
        gamma=0.99,
        ent_coef=0.01,
        final_training_epochs=0,
    ),
}

# Network sizes (``policy_kwargs``) of each preset; the published ones are the config dataclasses' defaults.
PRESET_POLICY_KWARGS: dict[str, dict[str, dict[str, Any]]] = {
    PUBLISHED: {},
    VECTOR: dict(
        tokenizer_kwargs=dict(tokens_per_obs=4, vocab_size=128, hidden_sizes=(128, 128), embed_dim=2),
        world_model_kwargs=dict(
            num_layers=2, num_heads=2, embed_dim=64, embed_dropout=0.0, residual_dropout=0.0, attention_dropout=0.0
        ),
        actor_critic_kwargs=dict(mlp_hidden_sizes=(64, 64), lstm_dim=64, recurrent=False),
    ),
}


def resolve_preset(preset: Optional[str], policy: Union[str, type]) -> str:
    """The preset of a model: ``preset`` itself, or by policy when None (``MlpPolicy``: vector, else published).

    :param preset: ``"published"``, ``"vector"`` or None
    :param policy: the policy name or class
    """
    from sb3_iris.policies import MlpPolicy

    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset={preset!r} is not one of {PRESETS} (or None: by policy)")
        is_mlp = policy == "MlpPolicy" or (isinstance(policy, type) and issubclass(policy, MlpPolicy))
        if preset == VECTOR and not is_mlp:
            raise ValueError(f"preset={preset!r} sizes an MLP tokenizer: it needs MlpPolicy, got policy={policy!r}")
        return preset
    if policy == "MlpPolicy" or (isinstance(policy, type) and issubclass(policy, MlpPolicy)):
        return VECTOR
    return PUBLISHED


def merge_policy_kwargs(preset: str, policy_kwargs: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The preset's network sizes updated with the user's ``policy_kwargs`` (per part, key by key; a copy).

    :param preset: a name from :data:`PRESETS`
    :param policy_kwargs: the user's policy keyword arguments (None: none)
    """
    merged = copy.deepcopy(PRESET_POLICY_KWARGS[preset])
    for key, value in (policy_kwargs or {}).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def apply_preset(model: Any, preset: Optional[str]) -> None:
    """Set ``model.preset``; fill the arguments ``model`` holds as None, and its network sizes, from the preset.

    :param model: the IRIS model being constructed (its arguments and ``policy_class`` set)
    :param preset: ``"published"``, ``"vector"`` or None (by policy, :func:`resolve_preset`)
    """
    model.preset = resolve_preset(preset, model.policy_class)
    for name, value in PRESET_HYPERPARAMETERS[model.preset].items():
        if getattr(model, name) is None:
            setattr(model, name, value)
    model.policy_kwargs = merge_policy_kwargs(model.preset, model.policy_kwargs)
