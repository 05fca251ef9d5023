"""sb3-iris: IRIS (Transformers are Sample-Efficient World Models) as a Stable-Baselines3 algorithm."""

from sb3_iris.iris import IRIS
from sb3_iris.policies import CnnPolicy, IrisPolicy, MlpPolicy
from sb3_iris.version import __version__

__all__ = ["IRIS", "CnnPolicy", "IrisPolicy", "MlpPolicy", "__version__"]
