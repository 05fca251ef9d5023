"""The Atari 100k suite on a Ray cluster: (game, seed) RL Zoo runs, resumable, with the paper's table side by side.

::

    pip install "sb3-iris[cluster]"
    python -m sb3_iris.suite run --out suite/atari100k                       # a local Ray instance
    python -m sb3_iris.suite run --out /shared/atari100k --address auto      # an existing Ray cluster
    python -m sb3_iris.suite status --out suite/atari100k
    python -m sb3_iris.suite report --out suite/atari100k

Every run is the RL Zoo command a user would type (:func:`sb3_iris.suite.runs.build_command`)::

    python -m rl_zoo3.train --algo iris --env PongNoFrameskip-v4 --seed 0 -n 100000 --save-freq 10000 \\
        --save-replay-buffer --eval-freq 20000 --eval-episodes 10 --device cuda --num-threads 1 -f <run>/zoo

and a run started again continues from its latest checkpoint with ``-i <run>/zoo/iris/<EnvId>_<n>/
rl_model_<steps>_steps.zip -n <budget - steps>`` (the replay buffer saved with the checkpoint is loaded, the step
counter continues: see :mod:`sb3_iris.zoo`). Modules: :mod:`~sb3_iris.suite.runs` (configuration, folders,
commands, checkpoints, states), :mod:`~sb3_iris.suite.scheduler` (Ray), :mod:`~sb3_iris.suite.status`,
:mod:`~sb3_iris.suite.report`, :mod:`~sb3_iris.suite.zoo_runs` (shared with ``benchmarks/sample_efficiency.py``).
Only the scheduler needs Ray, and imports it when it runs.
"""

from sb3_iris.suite.runs import RunSpec, SuiteConfig

__all__ = ["RunSpec", "SuiteConfig"]
