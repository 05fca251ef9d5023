"""The IRIS world model: a causal transformer over blocks of K observation tokens + 1 action token.

Heads (each Linear-ReLU-Linear), evaluated only at the positions where they are used:
- next observation token at every position except the last observation token of a block
  (observation token k predicts token k+1; the action token predicts token 0 of the next frame);
- reward sign (3 classes: -1, 0, +1) and episode end (2 classes) at action positions.

With ``parallel_observations`` (not in IRIS; as REM's parallel observation prediction and STORM's one
prediction per frame), the action token predicts all K tokens of the next frame at once (one head output of
K x V logits, the tokens sampled independently given the context): imagination then needs one transformer
pass per step instead of K.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from sb3_iris.nn.transformer import KVCache, Transformer, TransformerConfig

IGNORE_INDEX = -100


@dataclass
class WorldModelConfig:
    """World-model sizes (defaults: the published IRIS configuration, about 8.4M parameters).

    :param obs_vocab_size: tokenizer codebook size
    :param num_actions: number of discrete actions
    :param tokens_per_obs: observation tokens per step (K)
    :param max_blocks: context length in steps
    :param num_layers: transformer blocks
    :param num_heads: attention heads
    :param embed_dim: width
    :param embed_dropout: dropout on embeddings
    :param residual_dropout: dropout on residual branches
    :param attention_dropout: dropout on attention weights
    :param parallel_observations: predict all K tokens of the next frame from the action token in one pass
        (not in IRIS, off by default)
    """

    obs_vocab_size: int = 512
    num_actions: int = 18
    tokens_per_obs: int = 16
    max_blocks: int = 20
    num_layers: int = 10
    num_heads: int = 4
    embed_dim: int = 256
    embed_dropout: float = 0.1
    residual_dropout: float = 0.1
    attention_dropout: float = 0.1
    parallel_observations: bool = False

    @property
    def tokens_per_block(self) -> int:
        return self.tokens_per_obs + 1

    def validate(self) -> None:
        """Raise ``ValueError`` for impossible configurations."""
        for name in ("obs_vocab_size", "num_actions", "tokens_per_obs", "max_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not isinstance(self.parallel_observations, bool):
            raise ValueError(
                f"world_model_kwargs parallel_observations={self.parallel_observations!r} must be True or False"
            )
        self.transformer_config().validate()

    def transformer_config(self) -> TransformerConfig:
        return TransformerConfig(
            tokens_per_block=self.tokens_per_block,
            max_blocks=self.max_blocks,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            embed_dim=self.embed_dim,
            embed_dropout=self.embed_dropout,
            residual_dropout=self.residual_dropout,
            attention_dropout=self.attention_dropout,
        )


class WorldModelOutput(NamedTuple):
    """Head outputs for a run of tokens.

    :param hidden: transformer output ``(B, T, D)``
    :param logits_observations: ``(B, n_obs, V)`` at the positions ``obs_positions`` (relative to the run);
        with ``parallel_observations`` ``(B, n_act, K, V)`` at the action positions (the next frame's K tokens)
    :param logits_rewards: ``(B, n_act, 3)`` at ``action_positions``
    :param logits_ends: ``(B, n_act, 2)`` at ``action_positions``
    :param obs_positions: positions (in the run) of the observation logits
    :param action_positions: positions (in the run) of the reward/end logits
    """

    hidden: torch.Tensor
    logits_observations: torch.Tensor
    logits_rewards: torch.Tensor
    logits_ends: torch.Tensor
    obs_positions: torch.Tensor
    action_positions: torch.Tensor


class WorldModelLosses(NamedTuple):
    """Scalars of one world-model update; ``total`` is the sum of the three cross-entropies."""

    total: torch.Tensor
    observations: torch.Tensor
    rewards: torch.Tensor
    ends: torch.Tensor


class WorldModelPredictions(NamedTuple):
    """Logits of the three heads on a batch of segments and their targets, flattened (``IGNORE_INDEX``: no target).

    :param observations: ``(N_obs, V)`` next-observation-token logits, only where a target exists (real steps)
    :param observation_labels: ``(N_obs,)`` their targets (never ``IGNORE_INDEX``)
    :param rewards: ``(B * L, 3)`` reward-sign logits; :param reward_labels: ``(B * L,)`` in {0, 1, 2}
    :param ends: ``(B * L, 2)`` end logits; :param end_labels: ``(B * L,)`` in {0, 1}
    """

    observations: torch.Tensor
    observation_labels: torch.Tensor
    rewards: torch.Tensor
    reward_labels: torch.Tensor
    ends: torch.Tensor
    end_labels: torch.Tensor


def _head(embed_dim: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(), nn.Linear(embed_dim, n_out))


def interleave_tokens(obs_tokens: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``(B, L, K)`` observation tokens and ``(B, L)`` actions -> ``(B, L * (K + 1))`` token sequence."""
    return torch.cat([obs_tokens, actions.unsqueeze(-1)], dim=-1).flatten(1)


def observation_labels(obs_tokens: torch.Tensor, mask_padding: torch.Tensor) -> torch.Tensor:
    """Targets ``(B, L*K - 1)`` of the sequential next-token head: the observation tokens shifted by one,
    ``IGNORE_INDEX`` on padded steps.

    :param obs_tokens: ``(B, L, K)``
    :param mask_padding: ``(B, L)`` True for real steps
    """
    return obs_tokens.masked_fill(~mask_padding.unsqueeze(-1), IGNORE_INDEX).flatten(1)[:, 1:]


def world_model_labels(
    obs_tokens: torch.Tensor,
    rewards: torch.Tensor,
    ends: torch.Tensor,
    mask_padding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Targets of the three heads, ``IGNORE_INDEX`` on padded steps.

    :param obs_tokens: ``(B, L, K)``
    :param rewards: ``(B, L)`` real rewards (the head learns their sign)
    :param ends: ``(B, L)`` episode terminations
    :param mask_padding: ``(B, L)`` True for real steps
    :return: observation labels ``(B, L*K - 1)`` (the sequence of observation tokens shifted by one),
        reward labels ``(B, L)`` in {0, 1, 2} = sign + 1, end labels ``(B, L)`` in {0, 1}
    """
    padded = ~mask_padding
    labels_obs = observation_labels(obs_tokens, mask_padding)
    labels_rewards = (torch.sign(rewards).long() + 1).masked_fill(padded, IGNORE_INDEX)
    labels_ends = ends.long().masked_fill(padded, IGNORE_INDEX)
    return labels_obs, labels_rewards, labels_ends


class WorldModel(nn.Module):
    """GPT over (observation tokens, action) blocks with next-token, reward and end heads.

    :param config: sizes (see :class:`WorldModelConfig`)
    """

    def __init__(self, config: WorldModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        transformer_config = config.transformer_config()
        self.transformer = Transformer(transformer_config)
        self.obs_embedding = nn.Embedding(config.obs_vocab_size, config.embed_dim)
        self.action_embedding = nn.Embedding(config.num_actions, config.embed_dim)
        self.position_embedding = nn.Embedding(transformer_config.max_tokens, config.embed_dim)
        observation_outputs = config.obs_vocab_size * (config.tokens_per_obs if config.parallel_observations else 1)
        self.head_observations = _head(config.embed_dim, observation_outputs)
        self.head_rewards = _head(config.embed_dim, 3)
        self.head_ends = _head(config.embed_dim, 2)
        self.apply(self._init_weights)
        self._position_cache: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # minGPT initialisation.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def tokens_per_block(self) -> int:
        return self.config.tokens_per_block

    @property
    def max_tokens(self) -> int:
        return self.transformer.config.max_tokens

    def new_cache(self, batch_size: int, device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32):
        """Empty :class:`KVCache` for ``batch_size`` sequences."""
        device = device if device is not None else self.position_embedding.weight.device
        return self.transformer.new_cache(batch_size, device, dtype)

    def _positions(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        """(absolute positions, positions of obs-head outputs, positions of action-head outputs) of a run."""
        key = (start, length, str(device))
        if key not in self._position_cache:
            positions = torch.arange(start, start + length, device=device)
            in_block = positions % self.tokens_per_block
            k = self.config.tokens_per_obs
            action_positions = torch.nonzero(in_block == k).squeeze(1)
            if self.config.parallel_observations:
                obs_positions = action_positions  # the action token predicts the whole next frame
            else:
                obs_positions = torch.nonzero(in_block != k - 1).squeeze(1)
            self._position_cache[key] = (positions, obs_positions, action_positions)
        return self._position_cache[key]

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """Embeddings of ``tokens`` ``(B, T)`` whose first token sits at absolute position ``start``."""
        length = tokens.shape[1]
        positions, _, _ = self._positions(start, length, tokens.device)
        k = self.config.tokens_per_obs
        if length == 1:
            # Hot path of imagination: one table lookup.
            table = self.action_embedding if start % self.tokens_per_block == k else self.obs_embedding
            token_embeddings = table(tokens)
        else:
            is_action = (positions % self.tokens_per_block == k).view(1, length, 1)
            obs_part = self.obs_embedding(tokens.clamp(max=self.config.obs_vocab_size - 1))
            action_part = self.action_embedding(tokens.clamp(max=self.config.num_actions - 1))
            token_embeddings = torch.where(is_action, action_part, obs_part)
        return token_embeddings + self.position_embedding(positions)

    def forward(
        self,
        tokens: torch.Tensor,
        cache: Optional[KVCache] = None,
        compute_observation_logits: bool = True,
        compute_action_logits: bool = True,
    ) -> WorldModelOutput:
        """Run the model on ``tokens`` ``(B, T)``, continuing ``cache`` if given (positions start at its size).

        :param tokens: interleaved observation and action tokens
        :param cache: KV cache to read and extend
        :param compute_observation_logits: evaluate the next-observation-token head
        :param compute_action_logits: evaluate the reward and end heads
        """
        start = cache.size if cache is not None else 0
        length = tokens.shape[1]
        if start + length > self.max_tokens:
            raise ValueError(f"sequence of {start + length} tokens exceeds the context of {self.max_tokens} tokens")
        hidden = self.transformer(self.embed(tokens, start), cache)
        _, obs_positions, action_positions = self._positions(start, length, tokens.device)
        empty = hidden.new_zeros(hidden.shape[0], 0, 1)
        logits_obs = empty
        if compute_observation_logits and obs_positions.numel() > 0:
            selected = hidden if obs_positions.numel() == length else hidden[:, obs_positions]
            logits_obs = self.head_observations(selected)
            if self.config.parallel_observations:
                logits_obs = logits_obs.unflatten(-1, (self.config.tokens_per_obs, self.config.obs_vocab_size))
        logits_rewards, logits_ends = empty, empty
        if compute_action_logits and action_positions.numel() > 0:
            selected = hidden if action_positions.numel() == length else hidden[:, action_positions]
            logits_rewards = self.head_rewards(selected)
            logits_ends = self.head_ends(selected)
        return WorldModelOutput(hidden, logits_obs, logits_rewards, logits_ends, obs_positions, action_positions)

    def forward_one_token(
        self, tokens: torch.Tensor, position: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Static-shape pass of one token at ``position`` against a full KV cache (for CUDA graphs / compile).

        Whether the token is an action or an observation token follows from ``position``, inside the graph.
        All three heads are evaluated (a few small matrix products; the caller uses what it needs).
        The cache is only read: write the returned keys and values at ``position`` (see
        :class:`sb3_iris.imagination.OneTokenStepper`). Eval mode only.

        :param tokens: ``(B, 1)`` token ids
        :param position: 0-d long tensor, the absolute position of the token (the cache's size)
        :param keys: ``(L, B, H, T_max, Dh)`` the cache's keys
        :param values: ``(L, B, H, T_max, Dh)`` the cache's values
        :return: observation, reward and end logits ``(B, 1, .)``, new keys and values ``(L, B, H, 1, Dh)``
        """
        if self.config.parallel_observations:
            raise NotImplementedError("forward_one_token (compile_imagination) does not support parallel_observations")
        is_action = (position % self.tokens_per_block) == self.config.tokens_per_obs
        action_part = self.action_embedding(tokens.clamp(max=self.config.num_actions - 1))
        obs_part = self.obs_embedding(tokens.clamp(max=self.config.obs_vocab_size - 1))
        embeddings = torch.where(is_action, action_part, obs_part) + self.position_embedding(position)
        hidden, new_keys, new_values = self.transformer.forward_one_token(embeddings, position, keys, values)
        return (
            self.head_observations(hidden),
            self.head_rewards(hidden),
            self.head_ends(hidden),
            new_keys,
            new_values,
        )

    def compute_loss(
        self,
        obs_tokens: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        ends: torch.Tensor,
        mask_padding: torch.Tensor,
    ) -> WorldModelLosses:
        """Sum of the next-token, reward-sign and end cross-entropies on a batch of segments.

        :param obs_tokens: ``(B, L, K)`` tokens of the observations (from the frozen tokenizer)
        :param actions: ``(B, L)`` actions taken
        :param rewards: ``(B, L)`` rewards received
        :param ends: ``(B, L)`` terminations
        :param mask_padding: ``(B, L)`` True for real steps; padded steps are ignored in all three losses
        """
        predictions = self.predictions(obs_tokens, actions, rewards, ends, mask_padding)
        loss_obs = F.cross_entropy(
            predictions.observations.float(), predictions.observation_labels, ignore_index=IGNORE_INDEX
        )
        loss_rewards = F.cross_entropy(
            predictions.rewards.float(), predictions.reward_labels, ignore_index=IGNORE_INDEX
        )
        loss_ends = F.cross_entropy(predictions.ends.float(), predictions.end_labels, ignore_index=IGNORE_INDEX)
        return WorldModelLosses(loss_obs + loss_rewards + loss_ends, loss_obs, loss_rewards, loss_ends)

    def predictions(
        self,
        obs_tokens: torch.Tensor,
        actions: torch.Tensor,
        rewards: torch.Tensor,
        ends: torch.Tensor,
        mask_padding: torch.Tensor,
    ) -> WorldModelPredictions:
        """One full pass over segments: the three heads' logits and their targets, as the loss compares them.

        The training loss (:meth:`compute_loss`) and the held-out evaluation (``WorldModelEvalCallback``) both
        use it, so they score the same predictions against the same targets. Arguments as in :meth:`compute_loss`.
        """
        output = self(interleave_tokens(obs_tokens, actions), compute_observation_logits=False)
        _, labels_rewards, labels_ends = world_model_labels(obs_tokens, rewards, ends, mask_padding)
        logits_obs, labels_obs = self.observation_predictions(output.hidden, obs_tokens, mask_padding)
        return WorldModelPredictions(
            logits_obs,
            labels_obs,
            output.logits_rewards.flatten(0, 1),
            labels_rewards.flatten(),
            output.logits_ends.flatten(0, 1),
            labels_ends.flatten(),
        )

    def observation_predictions(
        self, hidden: torch.Tensor, obs_tokens: torch.Tensor, mask_padding: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-observation-token logits of a full segment pass and their targets, for the targets that exist.

        Sequential (IRIS): every observation token but the last of the segment predicts the next one. Parallel:
        the action token of step t predicts the K tokens of step t + 1. Either way the last action token would
        predict a frame beyond the segment and is dropped. Only the rows with a target (not padding) go through the
        observation head: the same logits and targets as evaluating the head at every position and dropping the
        rest afterwards (``tests/test_networks.py``), without the full-size ``(B, T, V)`` logits, whose slicing,
        copying and zero-filled gradient cost about a seventh of a MinAtar world-model update.

        :param hidden: ``(B, L * (K + 1), D)`` the transformer's output on ``interleave_tokens(obs_tokens, actions)``
        :param obs_tokens: ``(B, L, K)``
        :param mask_padding: ``(B, L)`` True for real steps
        :return: logits ``(N, V)`` and labels ``(N,)`` of the N targets on real steps
        """
        _, obs_positions, _ = self._positions(0, hidden.shape[1], hidden.device)
        predicting = hidden[:, obs_positions[:-1]]
        if self.config.parallel_observations:
            has_target = mask_padding[:, 1:].bool()
            logits = self.head_observations(predicting[has_target])
            logits = logits.unflatten(-1, (self.config.tokens_per_obs, self.config.obs_vocab_size))
            return logits.reshape(-1, self.config.obs_vocab_size), obs_tokens[:, 1:][has_target].reshape(-1)
        labels = observation_labels(obs_tokens, mask_padding)
        has_target = labels != IGNORE_INDEX
        return self.head_observations(predicting[has_target]), labels[has_target]

    def weight_decay_groups(self, weight_decay: float) -> list[dict]:
        """AdamW parameter groups: decay on Linear weights only (minGPT / IRIS)."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, parameter in module.named_parameters(recurse=False):
                if isinstance(module, nn.Linear) and name == "weight":
                    decay.append(parameter)
                else:
                    no_decay.append(parameter)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
