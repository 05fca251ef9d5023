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
    "IRIS_PAPER_SCORES",
    "IRIS_PUBLISHED_RUNS",
    "IRIS_SCORES_SOURCE",
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

#: Where the published IRIS scores come from.
IRIS_SCORES_SOURCE = (
    "IRIS paper (Micheli, Alonso & Fleuret, 'Transformers are Sample-Efficient World Models', ICLR 2023, "
    "arXiv:2209.00588), Table 1 (mean over 5 seeds); per-seed scores: results/data/IRIS.json of the authors' "
    "repository github.com/eloialonso/iris"
)

#: Published IRIS score per game of the Atari 100k benchmark: Table 1 of the IRIS paper (mean over 5 seeds).
#: Source: :data:`IRIS_SCORES_SOURCE`. Mean HNS 1.046, median 0.289, superhuman on 10 games.
IRIS_PAPER_SCORES: dict[str, float] = {
    "Alien": 420.0,
    "Amidar": 143.0,
    "Assault": 1524.4,
    "Asterix": 853.6,
    "BankHeist": 53.1,
    "BattleZone": 13074.0,
    "Boxing": 70.1,
    "Breakout": 83.7,
    "ChopperCommand": 1565.0,
    "CrazyClimber": 59324.2,
    "DemonAttack": 2034.4,
    "Freeway": 31.1,
    "Frostbite": 259.1,
    "Gopher": 2236.1,
    "Hero": 7037.4,
    "Jamesbond": 462.7,
    "Kangaroo": 838.2,
    "Krull": 6616.4,
    "KungFuMaster": 21759.8,
    "MsPacman": 999.1,
    "Pong": 14.6,
    "PrivateEye": 100.0,
    "Qbert": 745.7,
    "RoadRunner": 9614.6,
    "Seaquest": 661.3,
    "UpNDown": 3546.2,
}

#: The 5 per-seed IRIS scores behind :data:`IRIS_PAPER_SCORES` (the authors' ``results/data/IRIS.json``, see
#: :data:`IRIS_SCORES_SOURCE`); their means are the Table 1 values.
IRIS_PUBLISHED_RUNS: dict[str, tuple[float, ...]] = {
    "Alien": (368.7, 452.5, 437.2, 331.7, 510.0),
    "Amidar": (196.0, 126.0, 164.9, 162.9, 65.1),
    "Assault": (1481.3, 928.1, 1121.8, 1556.0, 2534.8),
    "Asterix": (762.5, 1114.0, 1082.0, 716.5, 593.0),
    "BankHeist": (42.2, 48.8, 68.4, 46.4, 59.6),
    "BattleZone": (16990.0, 14570.0, 11300.0, 10070.0, 12440.0),
    "Boxing": (86.2, 49.3, 55.8, 83.5, 75.5),
    "Breakout": (104.6, 85.6, 69.7, 70.3, 88.1),
    "ChopperCommand": (1150.0, 1276.0, 1659.0, 2162.0, 1578.0),
    "CrazyClimber": (64101.0, 66127.0, 62740.0, 77066.0, 26587.0),
    "DemonAttack": (905.0, 2011.9, 2888.5, 2613.4, 1753.0),
    "Freeway": (30.9, 31.5, 30.5, 30.8, 31.6),
    "Frostbite": (274.3, 250.0, 295.0, 250.0, 226.3),
    "Gopher": (2987.2, 2476.8, 3110.4, 1171.4, 1434.8),
    "Hero": (6916.2, 6933.9, 6740.6, 7881.6, 6714.7),
    "Jamesbond": (487.5, 394.0, 486.0, 464.0, 482.0),
    "Kangaroo": (2249.0, 732.0, 750.0, 90.0, 370.0),
    "Krull": (6047.4, 7364.8, 4980.6, 6006.3, 8683.0),
    "KungFuMaster": (7301.0, 15949.0, 34406.0, 14372.0, 36771.0),
    "MsPacman": (1251.6, 941.5, 590.3, 770.8, 1441.1),
    "Pong": (19.3, 18.5, 16.6, 6.2, 12.4),
    "PrivateEye": (100.0, 100.0, 100.0, 100.0, 100.0),
    "Qbert": (853.0, 575.0, 790.2, 1027.2, 483.2),
    "RoadRunner": (11355.0, 2033.0, 17106.0, 7614.0, 9965.0),
    "Seaquest": (752.2, 855.8, 691.0, 386.0, 621.6),
    "UpNDown": (3793.0, 5367.5, 2943.7, 3637.9, 1988.9),
}

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
