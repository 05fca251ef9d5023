"""IRIS policies: the tokenizer, the world model and the actor-critic, with their optimisers.

``CnnPolicy`` is for image observations (the published networks for 64x64 RGB; other square sizes
through ``policy_kwargs``), ``MlpPolicy`` for 1-D vector observations (MLP tokenizer).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Optional

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule

from sb3_iris.imagination import sample_from_logits
from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig, LSTMState
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig, MlpTokenizer, MlpTokenizerConfig, Tokenizer
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig
from sb3_iris.spaces import check_image_observations, check_spaces, check_vector_observations, is_image
from sb3_iris.validation import check_predict_image, check_predict_state

# Policy-level LSTM state as RecurrentPPO exposes it: (h, c), each (1, n_envs, lstm_dim).
NumpyLSTMState = tuple[np.ndarray, np.ndarray]


def _build_config(config_class: type, kwargs: Optional[dict[str, Any]], argument: str, **fixed: Any):
    """Instantiate a config dataclass from user kwargs, rejecting unknown names with a clear error."""
    kwargs = dict(kwargs or {})
    valid = {f.name for f in fields(config_class)}
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(
            f"policy_kwargs['{argument}'] has unknown keys {unknown}; valid keys: {sorted(valid - set(fixed))}"
        )
    clashing = sorted(set(kwargs) & set(fixed))
    if clashing:
        raise ValueError(
            f"policy_kwargs['{argument}'] sets {clashing}, which are derived from the spaces "
            f"({ {k: fixed[k] for k in clashing} })"
        )
    for key, value in kwargs.items():
        if isinstance(value, list):
            kwargs[key] = tuple(value)
    try:
        # The configs check their field types in __post_init__; validate() checks the combinations (before
        # any network is built: WorldModelConfig's transformer sizes are only checked there).
        config = config_class(**kwargs, **fixed)
        if hasattr(config, "validate"):
            config.validate()
    except (TypeError, ValueError) as e:
        raise ValueError(f"policy_kwargs['{argument}']: {e}") from e
    return config


def _make_optimizer(
    optimizer_class: type[torch.optim.Optimizer], params: Any, learning_rate: float, fused: bool, extra: dict
) -> torch.optim.Optimizer:
    """Build an optimiser, with fused kernels when asked and supported (older torch: plain kernels)."""
    params = list(params)
    if fused and "fused" not in extra:
        try:
            return optimizer_class(params, lr=learning_rate, fused=True, **extra)
        except (RuntimeError, TypeError, ValueError):
            pass
    return optimizer_class(params, lr=learning_rate, **extra)


class IrisPolicy(BasePolicy):
    """Holds the three learned parts of IRIS and their optimisers.

    :param observation_space: observation space (channel-first uint8 images or 1-D float vectors)
    :param action_space: ``Discrete`` action space
    :param lr_schedule: learning-rate schedule shared by the three optimisers (IRIS: constant 1e-4)
    :param tokenizer_kwargs: fields of :class:`~sb3_iris.nn.tokenizer.ConvTokenizerConfig` (images) or
        :class:`~sb3_iris.nn.tokenizer.MlpTokenizerConfig` (vectors)
    :param world_model_kwargs: fields of :class:`~sb3_iris.nn.world_model.WorldModelConfig`
        (``obs_vocab_size``, ``num_actions`` and ``tokens_per_obs`` come from the tokenizer and the action space)
    :param actor_critic_kwargs: fields of :class:`~sb3_iris.nn.actor_critic.ActorCriticConfig`
    :param world_model_weight_decay: AdamW weight decay on the world model's Linear weights (IRIS: 0.01)
    :param optimizer_kwargs: extra keyword arguments for the three optimisers (e.g. ``eps``, ``fused``)
    :param normalize_images: kept for SB3 compatibility; images are always mapped to [-1, 1] by the tokenizer
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        tokenizer_kwargs: Optional[dict[str, Any]] = None,
        world_model_kwargs: Optional[dict[str, Any]] = None,
        actor_critic_kwargs: Optional[dict[str, Any]] = None,
        world_model_weight_decay: float = 0.01,
        optimizer_kwargs: Optional[dict[str, Any]] = None,
        normalize_images: bool = True,
    ) -> None:
        self._check_spaces(observation_space, action_space)
        super().__init__(
            observation_space,
            action_space,
            optimizer_class=torch.optim.Adam,
            optimizer_kwargs=optimizer_kwargs,
            normalize_images=normalize_images,
        )
        self.tokenizer_kwargs = dict(tokenizer_kwargs or {})
        self.world_model_kwargs = dict(world_model_kwargs or {})
        self.actor_critic_kwargs = dict(actor_critic_kwargs or {})
        self.world_model_weight_decay = world_model_weight_decay
        self._build(lr_schedule)

    # ----------------------------------------------------------------------------------------------
    # Construction
    # ----------------------------------------------------------------------------------------------

    @property
    def is_image(self) -> bool:
        return is_image(self.observation_space)

    def _check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        check_spaces(observation_space, action_space)

    def _make_tokenizer(self) -> Tokenizer:
        shape = self.observation_space.shape
        if self.is_image:
            channels, height, width = shape
            if height != width:
                raise ValueError(f"CnnPolicy needs square images, got observation shape (C, H, W)={shape}")
            config = _build_config(
                ConvTokenizerConfig, self.tokenizer_kwargs, "tokenizer_kwargs", resolution=height, in_channels=channels
            )
            return ConvTokenizer(config)
        config = _build_config(MlpTokenizerConfig, self.tokenizer_kwargs, "tokenizer_kwargs", obs_dim=shape[0])
        return MlpTokenizer(config)

    def _build(self, lr_schedule: Schedule) -> None:
        self.tokenizer = self._make_tokenizer()
        num_actions = int(self.action_space.n)
        world_model_config = _build_config(
            WorldModelConfig,
            self.world_model_kwargs,
            "world_model_kwargs",
            obs_vocab_size=self.tokenizer.vocab_size,
            num_actions=num_actions,
            tokens_per_obs=self.tokenizer.tokens_per_obs,
        )
        self.world_model = WorldModel(world_model_config)
        actor_critic_config = _build_config(
            ActorCriticConfig,
            self.actor_critic_kwargs,
            "actor_critic_kwargs",
            num_actions=num_actions,
            observation_shape=tuple(self.observation_space.shape),
        )
        self.actor_critic = ActorCritic(actor_critic_config)
        # The optimisers are made once the networks are on their device (fused kernels need the parameters there):
        # IRIS._setup_model calls make_optimizers after policy.to(device).

    def make_optimizers(self, lr_schedule: Schedule, fused: bool = False) -> None:
        """Create the three optimisers: Adam for tokenizer and actor-critic, AdamW for the world model.

        Call it once the networks are on their device (the algorithm does, in ``_setup_model``).

        :param lr_schedule: learning-rate schedule (its value at progress 1 is the initial rate)
        :param fused: use fused kernels where this torch supports them for the parameters' device
        """
        learning_rate = lr_schedule(1)
        extra = dict(self.optimizer_kwargs)
        self.tokenizer_optimizer = _make_optimizer(
            torch.optim.Adam, self.tokenizer.parameters(), learning_rate, fused, extra
        )
        self.world_model_optimizer = _make_optimizer(
            torch.optim.AdamW,
            self.world_model.weight_decay_groups(self.world_model_weight_decay),
            learning_rate,
            fused,
            extra,
        )
        self.actor_critic_optimizer = _make_optimizer(
            torch.optim.Adam, self.actor_critic.parameters(), learning_rate, fused, extra
        )
        # SB3 code that looks for `policy.optimizer` (e.g. learning-rate logging) finds the actor-critic's.
        self.optimizer = self.actor_critic_optimizer

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The three optimisers (tokenizer, world model, actor-critic)."""
        return [self.tokenizer_optimizer, self.world_model_optimizer, self.actor_critic_optimizer]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            tokenizer_kwargs=self.tokenizer_kwargs,
            world_model_kwargs=self.world_model_kwargs,
            actor_critic_kwargs=self.actor_critic_kwargs,
            world_model_weight_decay=self.world_model_weight_decay,
            lr_schedule=self._dummy_schedule,
        )
        return data

    # ----------------------------------------------------------------------------------------------
    # Acting
    # ----------------------------------------------------------------------------------------------

    def initial_state(self, n_envs: int) -> LSTMState:
        """Zero LSTM state for ``n_envs`` environments."""
        return self.actor_critic.initial_state(n_envs, self.device)

    @torch.no_grad()
    def reconstruct(self, observations: torch.Tensor) -> torch.Tensor:
        """What the agent sees: the tokenizer's reconstruction of raw observations ``(B, *obs_shape)``."""
        return self.tokenizer.reconstruct(self.tokenizer.preprocess(observations))

    @torch.no_grad()
    def act(
        self,
        observations: torch.Tensor,
        state: LSTMState,
        episode_starts: torch.Tensor,
        temperature: float = 1.0,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, LSTMState]:
        """Choose actions in the real environment from raw observations.

        :param observations: raw observations ``(B, *obs_shape)`` (uint8 images or float vectors)
        :param state: LSTM state ``(h, c)``, each ``(B, lstm_dim)``
        :param episode_starts: ``(B,)``; the LSTM state is reset where True
        :param temperature: sampling temperature of the policy (IRIS: 1 for collection, 0.5 for evaluation)
        :param deterministic: take the most likely action instead of sampling
        :return: actions ``(B,)`` and the new LSTM state
        """
        keep = (~episode_starts.bool()).float().unsqueeze(-1)
        state = (state[0] * keep, state[1] * keep)
        output = self.actor_critic(self.reconstruct(observations), state)
        actions = sample_from_logits(output.logits, 0.0 if deterministic else temperature)
        return actions, output.state

    def forward(self, obs: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        """Actions from a fresh LSTM state (stateless use; prefer :meth:`predict` with ``state``)."""
        return self._predict(obs, deterministic)

    def _predict(self, observation: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        n = observation.shape[0]
        starts = torch.ones(n, dtype=torch.bool, device=self.device)
        actions, _ = self.act(observation, self.initial_state(n), starts, deterministic=deterministic)
        return actions

    def predict(
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: Optional[NumpyLSTMState] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Optional[NumpyLSTMState]]:
        """Actions and next LSTM state from observations, like RecurrentPPO.

        :param observation: one observation or a batch (images may be HxWxC or CxHxW)
        :param state: ``(h, c)``, each ``(1, n_envs, lstm_dim)``; zeros if None
        :param episode_start: ``(n_envs,)``; resets the state where True
        :param deterministic: most likely action instead of sampling at temperature 1
        :return: actions and the new state
        """
        self.set_training_mode(False)
        if isinstance(observation, dict):
            raise ValueError("IRIS policies take Box observations, got a dict observation")
        if self.is_image:
            check_predict_image(observation)
        observation_tensor, vectorized_env = self.obs_to_tensor(observation)
        n_envs = observation_tensor.shape[0]
        check_predict_state(state, episode_start, n_envs, self.actor_critic.config.lstm_dim)
        if n_envs == 0:
            # An empty batch: no actions (the networks cannot run on zero rows of every kind).
            empty = np.zeros((1, 0, self.actor_critic.config.lstm_dim), dtype=np.float32)
            return np.zeros(0, dtype=np.int64), (empty, empty.copy())
        if state is None:
            zeros = np.zeros((1, n_envs, self.actor_critic.config.lstm_dim), dtype=np.float32)
            state = (zeros, zeros.copy())
        if episode_start is None:
            episode_start = np.zeros(n_envs, dtype=bool)
        h, c = (torch.as_tensor(s, dtype=torch.float32, device=self.device)[0] for s in state)
        starts = torch.as_tensor(np.asarray(episode_start), device=self.device).reshape(n_envs)
        actions, (h, c) = self.act(observation_tensor, (h, c), starts, deterministic=deterministic)
        actions_np = actions.cpu().numpy()
        new_state = (h.unsqueeze(0).cpu().numpy(), c.unsqueeze(0).cpu().numpy())
        if not vectorized_env:
            actions_np = actions_np.squeeze(axis=0)
        return actions_np, new_state


class CnnPolicy(IrisPolicy):
    """IRIS policy for image observations (uint8 ``(C, H, W)``; SB3 transposes ``(H, W, C)`` automatically)."""

    def _check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        super()._check_spaces(observation_space, action_space)
        check_image_observations(observation_space)


class MlpPolicy(IrisPolicy):
    """IRIS policy for 1-D vector observations (MLP tokenizer)."""

    def _check_spaces(self, observation_space: spaces.Space, action_space: spaces.Space) -> None:
        super()._check_spaces(observation_space, action_space)
        check_vector_observations(observation_space)
