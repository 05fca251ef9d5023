"""Published random and human scores of the 26 Atari 100k games, and the human-normalised score.

The values are the standard ones of the Atari 100k literature (SimPLe, CURL, DrQ, SPR, IRIS, ...), which go
back to the DQN papers (Mnih et al., 2015; van Hasselt et al., 2016): ``random`` is a uniformly random
policy, ``human`` a professional human tester, both under the 30-no-op evaluation protocol.

HNS = (score - random) / (human - random): 0 is random play, 1 is human level. IRIS reports a mean HNS of
1.046 and a median of 0.289 over these 26 games.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

__all__ = [
    "ATARI_100K_GAMES",
    "ATARI_SCORES",
    "GameScores",
    "atari_game_name",
    "human_normalized_score",
]


class GameScores(NamedTuple):
    """Reference scores of one game."""

    random: float
    human: float


#: ``game name -> (random, human)`` for the 26 games of the Atari 100k benchmark.
ATARI_SCORES: dict[str, GameScores] = {
    "Alien": GameScores(227.8, 7127.7),
    "Amidar": GameScores(5.8, 1719.5),
    "Assault": GameScores(222.4, 742.0),
    "Asterix": GameScores(210.0, 8503.3),
    "BankHeist": GameScores(14.2, 753.1),
    "BattleZone": GameScores(2360.0, 37187.5),
    "Boxing": GameScores(0.1, 12.1),
    "Breakout": GameScores(1.7, 30.5),
    "ChopperCommand": GameScores(811.0, 7387.8),
    "CrazyClimber": GameScores(10780.5, 35829.4),
    "DemonAttack": GameScores(152.1, 1971.0),
    "Freeway": GameScores(0.0, 29.6),
    "Frostbite": GameScores(65.2, 4334.7),
    "Gopher": GameScores(257.6, 2412.5),
    "Hero": GameScores(1027.0, 30826.4),
    "Jamesbond": GameScores(29.0, 302.8),
    "Kangaroo": GameScores(52.0, 3035.0),
    "Krull": GameScores(1598.0, 2665.5),
    "KungFuMaster": GameScores(258.5, 22736.3),
    "MsPacman": GameScores(307.3, 6951.6),
    "Pong": GameScores(-20.7, 14.6),
    "PrivateEye": GameScores(24.9, 69571.3),
    "Qbert": GameScores(163.9, 13455.0),
    "RoadRunner": GameScores(11.5, 7845.0),
    "Seaquest": GameScores(68.4, 42054.7),
    "UpNDown": GameScores(533.4, 11693.2),
}

ATARI_100K_GAMES: tuple[str, ...] = tuple(ATARI_SCORES)

_LOWER_TO_GAME = {name.lower(): name for name in ATARI_SCORES}
# Env-id suffixes of the Gym/ALE families: PongNoFrameskip-v4, PongDeterministic-v4, Pong-v5, ALE/Pong-v5, ...
_ID_PATTERN = re.compile(r"^(?:.*[/:])?(?P<game>[A-Za-z]+?)(?:-ram)?(?:NoFrameskip|Deterministic)?(?:-v\d+)?$")


def atari_game_name(env_id: str) -> Optional[str]:
    """Game name of an Atari env id (``"PongNoFrameskip-v4"``, ``"ALE/Pong-v5"``, ``"pong"`` -> ``"Pong"``).

    :param env_id: a Gymnasium / ALE env id, or a game name
    :return: the name used in :data:`ATARI_SCORES`, or None if the id is not one of the 26 Atari 100k games
    """
    match = _ID_PATTERN.match(env_id.strip())
    if match is None:
        return None
    return _LOWER_TO_GAME.get(match.group("game").lower())


def human_normalized_score(score: float, game: str) -> float:
    """HNS = (score - random) / (human - random).

    :param score: a game score (undiscounted episode return, unclipped rewards)
    :param game: a game name (``"Pong"``) or an env id (``"PongNoFrameskip-v4"``)
    :raises KeyError: if ``game`` is not one of the 26 Atari 100k games
    """
    name = atari_game_name(game)
    if name is None:
        raise KeyError(f"no published human/random scores for {game!r}; known games: {', '.join(ATARI_100K_GAMES)}")
    reference = ATARI_SCORES[name]
    return (float(score) - reference.random) / (reference.human - reference.random)
