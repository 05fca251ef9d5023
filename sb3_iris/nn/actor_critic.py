"""The IRIS actor-critic: encoder + LSTMCell + policy and value heads, lambda-returns and the loss.

``recurrent=False`` replaces the LSTMCell by a feed-forward layer (not in IRIS; for tasks whose observations
are Markov states, where an LSTM trained on short imagined sequences can drift over long real episodes).

The actor-critic sees only tokenizer reconstructions (in the tokenizer's preprocessed space) and is
trained only in imagination.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sb3_iris.nn.config_checks import check_bools, check_int_tuples, check_ints

LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ActorCriticConfig:
    """Actor-critic sizes (defaults: the published IRIS actor-critic for 64x64 RGB, about 3.2M parameters).

    :param num_actions: number of discrete actions
    :param observation_shape: ``(C, H, W)`` for images or ``(D,)`` for vectors
    :param conv_channels: output channels of the conv3x3 + maxpool + ReLU stages (images)
    :param mlp_hidden_sizes: hidden sizes of the MLP encoder (vectors)
    :param lstm_dim: LSTMCell size (with ``recurrent=False``: size of the Linear + ReLU layer that replaces it)
    :param recurrent: True for IRIS's LSTMCell; False for a feed-forward core whose state is passed through
        unchanged (the state tensors keep their shapes, so callers need not know which core is used)
    :param flatten_images: read images with the MLP encoder (``mlp_hidden_sizes``) over their flattened pixels
        instead of the conv stages (not in IRIS; False). For small synthetic images such as MinAtar's 16x16, where
        one pixel is one object and the conv stages' max-pooling blurs the positions that matter
    """

    num_actions: int = 18
    observation_shape: tuple[int, ...] = (3, 64, 64)
    conv_channels: tuple[int, ...] = (32, 32, 64, 64)
    mlp_hidden_sizes: tuple[int, ...] = (256, 256)
    lstm_dim: int = 512
    recurrent: bool = True
    flatten_images: bool = False

    def __post_init__(self) -> None:
        check_bools(self, ("flatten_images",))
        check_ints(self, ("num_actions", "lstm_dim"))
        check_int_tuples(self, ("observation_shape",), allow_empty=False)
        check_int_tuples(self, ("conv_channels", "mlp_hidden_sizes"))

    @property
    def is_image(self) -> bool:
        return len(self.observation_shape) == 3


class ActorCriticOutput(NamedTuple):
    """:param logits: ``(B, A)`` policy logits; :param values: ``(B,)``; :param state: the new LSTM state."""

    logits: torch.Tensor
    values: torch.Tensor
    state: LSTMState


class ActorCriticLosses(NamedTuple):
    """Scalars of one actor-critic update; ``total = policy - ent_coef * entropy + value``."""

    total: torch.Tensor
    policy: torch.Tensor
    value: torch.Tensor
    entropy: torch.Tensor


def _conv_encoder(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.Flatten())
    return nn.Sequential(*layers)


def _mlp_encoder(in_dim: int, hidden_sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(in_dim, size), nn.ReLU()]
        in_dim = size
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Recurrent (or, with ``recurrent=False``, feed-forward) actor-critic over reconstructed observations.

    :param config: sizes (see :class:`ActorCriticConfig`)
    """

    def __init__(self, config: ActorCriticConfig) -> None:
        super().__init__()
        self.config = config
        if not isinstance(config.recurrent, bool):
            raise ValueError(
                f"actor_critic_kwargs recurrent={config.recurrent!r} must be True (LSTMCell, IRIS) or False "
                "(feed-forward)"
            )
        if config.is_image and not config.flatten_images:
            c, h, w = config.observation_shape
            downscale = 2 ** len(config.conv_channels)
            if h % downscale or w % downscale:
                raise ValueError(
                    f"observation_shape={config.observation_shape}: height and width must be divisible by "
                    f"2**len(conv_channels)={downscale}"
                )
            self.encoder = _conv_encoder(c, config.conv_channels)
            features = config.conv_channels[-1] * (h // downscale) * (w // downscale)
        else:
            # Vectors, or images read as their flattened pixels (flatten_images).
            in_dim = math.prod(config.observation_shape)
            mlp = _mlp_encoder(in_dim, config.mlp_hidden_sizes)
            self.encoder = nn.Sequential(nn.Flatten(), mlp) if config.is_image else mlp
            features = config.mlp_hidden_sizes[-1] if config.mlp_hidden_sizes else in_dim
        if config.recurrent:
            self.lstm = nn.LSTMCell(features, config.lstm_dim)
        else:
            self.feedforward = nn.Sequential(nn.Linear(features, config.lstm_dim), nn.ReLU())
        self.actor = nn.Linear(config.lstm_dim, config.num_actions)
        self.critic = nn.Linear(config.lstm_dim, 1)

    def initial_state(self, batch_size: int, device: Optional[torch.device] = None) -> LSTMState:
        """Zero LSTM state for ``batch_size`` sequences."""
        device = device if device is not None else self.actor.weight.device
        zeros = torch.zeros(batch_size, self.config.lstm_dim, device=device)
        return zeros, zeros.clone()

    def forward(
        self, observations: torch.Tensor, state: LSTMState, mask: Optional[torch.Tensor] = None
    ) -> ActorCriticOutput:
        """One step on a batch of reconstructed observations.

        :param observations: ``(B, *observation_shape)`` in the tokenizer's preprocessed space
        :param state: LSTM ``(h, c)``, each ``(B, lstm_dim)``
        :param mask: optional ``(B,)`` bool; where False the state is left unchanged (padded steps)
        """
        features = self.encoder(observations)
        if not self.config.recurrent:
            hidden = self.feedforward(features)
            return ActorCriticOutput(self.actor(hidden), self.critic(hidden).squeeze(-1), state)
        hx, cx = self.lstm(features, state)
        if mask is not None:
            keep = mask.unsqueeze(-1)
            hx = torch.where(keep, hx, state[0])
            cx = torch.where(keep, cx, state[1])
        return ActorCriticOutput(self.actor(hx), self.critic(hx).squeeze(-1), (hx, cx))

    def burn_in(
        self, observations: torch.Tensor, mask_padding: torch.Tensor, state: Optional[LSTMState] = None
    ) -> LSTMState:
        """Feed a sequence through the LSTM (padded steps leave the state unchanged) and return the state.

        :param observations: ``(B, T, *observation_shape)``
        :param mask_padding: ``(B, T)`` True for real steps
        :param state: initial state (zeros if None)
        """
        if state is None:
            state = self.initial_state(observations.shape[0], observations.device)
        if not self.config.recurrent:
            return state
        for t in range(observations.shape[1]):
            if mask_padding[:, t].any():
                state = self(observations[:, t], state, mask_padding[:, t]).state
        return state


def compute_lambda_returns(
    rewards: torch.Tensor, values: torch.Tensor, ends: torch.Tensor, gamma: float, lambda_: float
) -> torch.Tensor:
    """TD(lambda) returns over imagined trajectories, bootstrapped from the last value.

    ``G_{T-1} = V_{T-1}``, and for ``t < T-1``:
    ``G_t = r_t + gamma * (1 - d_t) * ((1 - lambda) * V_{t+1} + lambda * G_{t+1})``.

    :param rewards: ``(B, T)`` rewards of the actions taken at each step
    :param values: ``(B, T)`` value estimates of the states at each step
    :param ends: ``(B, T)`` episode-end flags of each step (no bootstrapping past an end)
    :param gamma: discount
    :param lambda_: lambda of TD(lambda)
    :return: ``(B, T)`` returns
    """
    not_end = 1.0 - ends.float()
    returns = torch.empty_like(values)
    returns[:, -1] = values[:, -1]
    for t in reversed(range(rewards.shape[1] - 1)):
        bootstrap = (1.0 - lambda_) * values[:, t + 1] + lambda_ * returns[:, t + 1]
        returns[:, t] = rewards[:, t] + gamma * not_end[:, t] * bootstrap
    return returns


def standardize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """``(A - mean(A)) / (std(A) + 1e-8)`` over the whole batch; a batch of one is returned as it is."""
    if advantages.numel() <= 1:
        return advantages
    return (advantages - advantages.mean()) / (advantages.std() + 1e-8)


def taken_action_log_probs(log_probs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-probabilities ``(...)`` of the taken ``actions`` ``(...)`` from log-probabilities ``(..., A)``."""
    return log_probs.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def actor_critic_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    ent_coef: float,
    normalize_advantage: bool = False,
) -> ActorCriticLosses:
    """REINFORCE with a value baseline, entropy bonus and MSE value loss (IRIS):

    ``L = -mean(log pi(a) * (G - sg(V))) - ent_coef * mean(H(pi)) + mean((V - sg(G))^2)``.

    :param logits: ``(B, T, A)`` policy logits
    :param actions: ``(B, T)`` actions taken
    :param values: ``(B, T)`` value estimates
    :param returns: ``(B, T)`` lambda-returns (treated as constants)
    :param ent_coef: entropy weight
    :param normalize_advantage: standardise the advantages over the batch (not in IRIS; helps dense-reward tasks,
        whose returns are large while the value head, a Linear over the LSTM output, catches up slowly)
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    action_log_probs = taken_action_log_probs(log_probs, actions)
    returns = returns.detach()
    advantages = returns - values.detach()
    if normalize_advantage:
        advantages = standardize_advantages(advantages)
    policy_loss = -(action_log_probs * advantages).mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    value_loss = F.mse_loss(values.float(), returns)
    total = policy_loss - ent_coef * entropy + value_loss
    return ActorCriticLosses(total, policy_loss, value_loss, entropy)


def clipped_actor_critic_loss(
    logits: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    values: torch.Tensor,
    returns: torch.Tensor,
    advantages: torch.Tensor,
    ent_coef: float,
    clip_range: float,
) -> ActorCriticLosses:
    """PPO's clipped surrogate with IRIS's entropy bonus and MSE value loss (not in IRIS: for several passes over
    one imagined batch, see ``IRIS(actor_critic_epochs=...)``):

    ``L = -mean(min(r A, clip(r, 1 - c, 1 + c) A)) - ent_coef * mean(H(pi)) + mean((V - sg(G))^2)``, with
    ``r = pi(a) / pi_old(a)``. When ``pi == pi_old`` (the first pass) its gradient equals :func:`actor_critic_loss`'s
    with the same advantages.

    :param logits: ``(N, A)`` policy logits of the current parameters
    :param actions: ``(N,)`` actions taken
    :param old_log_probs: ``(N,)`` log-probabilities of ``actions`` under the policy that imagined them
    :param values: ``(N,)`` value estimates of the current parameters
    :param returns: ``(N,)`` lambda-returns (treated as constants)
    :param advantages: ``(N,)`` advantages (treated as constants), e.g. returns minus the imagining values
    :param ent_coef: entropy weight
    :param clip_range: ``c`` > 0
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    action_log_probs = taken_action_log_probs(log_probs, actions)
    advantages = advantages.detach()
    ratio = torch.exp(action_log_probs - old_log_probs.detach())
    surrogate = torch.min(ratio * advantages, ratio.clamp(1.0 - clip_range, 1.0 + clip_range) * advantages)
    policy_loss = -surrogate.mean()
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    value_loss = F.mse_loss(values.float(), returns.detach())
    total = policy_loss - ent_coef * entropy + value_loss
    return ActorCriticLosses(total, policy_loss, value_loss, entropy)
