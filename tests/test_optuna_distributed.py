"""Distributed hyperparameter search: two ``rl_zoo3.train -optimize`` workers with ``--algo iris`` on one study.

The workers are separate processes with their own log folders (as on two machines) that share only the study's
storage: an Optuna JournalStorage file (``--storage <file>.log``, which RL Zoo opens with ``JournalFileBackend``)
or an RDB URL (``sqlite:///...``). The study is created first (as ``optuna create-study`` would), then both workers
run at once; every trial of both lands in the one study.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_zoo_cli import TINY_OPTIMIZE_PARAMS, _require_installed_hook

optuna = pytest.importorskip("optuna")
pytest.importorskip("rl_zoo3")

STUDY = "iris-cartpole"
TRIALS_PER_WORKER = 1


def _storage(kind: str, tmp_path: Path):
    """The ``--storage`` argument and the same storage opened here."""
    if kind == "journal":
        path = str(tmp_path / "study.log")
        return path, optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    return url, url


def _worker(storage: str, seed: int, logs: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "rl_zoo3.train", "--algo", "iris", "--env", "CartPole-v1",
        "-f", str(logs), "--num-threads", "1", "--seed", str(seed), "--device", "cpu",
        "-optimize", "--storage", storage, "--study-name", STUDY, "--n-trials", str(TRIALS_PER_WORKER),
        "--n-jobs", "1", "--sampler", "random", "--pruner", "none", "--n-evaluations", "1", "--eval-episodes", "1",
        "--no-optim-plots", "-n", "100", "-params", *TINY_OPTIMIZE_PARAMS,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# Each case starts two RL Zoo processes (about 30 s on 2 idle cores): the RDB URL one runs with the slow tests.
@pytest.mark.parametrize("kind", ["journal", pytest.param("sqlite", marks=pytest.mark.slow)])
def test_two_optimize_workers_share_one_study(tmp_path, kind):
    _require_installed_hook()
    argument, storage = _storage(kind, tmp_path)
    optuna.create_study(storage=storage, study_name=STUDY, direction="maximize")
    workers = [_worker(argument, seed, tmp_path / f"worker{seed}") for seed in (1, 2)]
    outputs = [worker.communicate(timeout=300)[0] for worker in workers]
    for worker, output in zip(workers, outputs):
        assert worker.returncode == 0, output[-4000:]
        assert "Sampler: random - Pruner: none" in output
    study = optuna.load_study(storage=storage, study_name=STUDY)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 * TRIALS_PER_WORKER
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.number for t in trials) == list(range(2 * TRIALS_PER_WORKER))
    assert "learning_rate" in trials[0].params and "--algo iris" in study.user_attrs["command"]
    # Each worker wrote its own report of the shared study (RL Zoo's report_<env>_<trials>-trials-...csv).
    for seed in (1, 2):
        assert list((tmp_path / f"worker{seed}" / "iris").glob("report_CartPole-v1_*.csv"))
