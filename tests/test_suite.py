"""sb3_iris.suite: configuration, commands, checkpoints, stitched evaluations, the report, and the resume test.

``test_suite_resumes_an_interrupted_run_from_its_checkpoint`` is the end-to-end check: a local Ray instance of 2
CPUs trains Pong and Breakout (real ALE games) x 2 seeds with tiny networks through the suite's RL Zoo commands;
the suite is interrupted (SIGINT, as Ctrl-C) once a Pong run wrote its first checkpoint; started again, it
finishes that run from the checkpoint (``-i``, the step counter continuing from the checkpoint's steps), skips
nothing it should not, and ``report`` gives the numbers of the runs' ``evaluations.npz`` files.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_zoo_cli import TINY_PONG, _require_installed_hook

from sb3_iris import zoo
from sb3_iris.atari_scores import (
    ATARI_100K_GAMES,
    ATARI_SCORES,
    IRIS_PAPER_SCORES,
    IRIS_PUBLISHED_RUNS,
    human_normalized_score,
)
from sb3_iris.suite import runs as suite_runs
from sb3_iris.suite.runs import RunSpec, SuiteConfig
from sb3_iris.suite.scheduler import resolve_gpus_per_run

ENTRY = ["python", "-m", "rl_zoo3.train"]


def _config(**overrides) -> SuiteConfig:
    settings = dict(games=("Pong", "Breakout"), seeds=(0, 1), budget=300, save_freq=100, eval_freq=100)
    settings.update(overrides)
    return SuiteConfig(**settings)


# --------------------------------------------------------------------------------------------------
# Published scores
# --------------------------------------------------------------------------------------------------
def test_published_iris_scores_match_the_paper_table():
    assert set(IRIS_PAPER_SCORES) == set(IRIS_PUBLISHED_RUNS) == set(ATARI_100K_GAMES)
    for game, runs in IRIS_PUBLISHED_RUNS.items():
        assert len(runs) == 5
        assert round(float(np.mean(runs)), 1) == pytest.approx(IRIS_PAPER_SCORES[game], abs=0.051), game
    hns = np.array([human_normalized_score(IRIS_PAPER_SCORES[game], game) for game in ATARI_100K_GAMES])
    # The paper's abstract and Table 1: mean HNS 1.046, median 0.289, superhuman on 10 games.
    assert round(float(hns.mean()), 3) == 1.046
    assert round(float(np.median(hns)), 3) == 0.289
    assert int((hns >= 1).sum()) == 10


# --------------------------------------------------------------------------------------------------
# Configuration and commands
# --------------------------------------------------------------------------------------------------
def test_config_accepts_names_and_env_ids_and_round_trips():
    config = _config(games=("pong", "BreakoutNoFrameskip-v4"), params=("gamma:0.99",), zoo_args=("-conf", "x.yml"))
    assert config.games == ("Pong", "Breakout")
    assert SuiteConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert SuiteConfig().games == ATARI_100K_GAMES and SuiteConfig().seeds == (0, 1, 2, 3, 4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(games=("Tetris",)), "'Tetris' is not one of the 26 Atari 100k games"),
        (dict(games=("Pong", "pong")), "without repeats"),
        (dict(seeds=(0, 0)), "seeds must be distinct"),
        (dict(budget=0), "budget must be a positive integer, got 0"),
        (dict(save_freq=300), "save_freq must be below budget (300)"),
        (dict(params=("gamma=0.9",)), "'gamma=0.9' is not KEY:VALUE"),
        (dict(zoo_args=("--seed", "3")), "zoo_args: ['--seed'] are set by the suite"),
    ],
)
def test_config_rejects_bad_values_naming_them(overrides, message):
    with pytest.raises(ValueError) as error:
        _config(**overrides)
    assert message in str(error.value)


def test_build_command_from_scratch_and_from_a_checkpoint(tmp_path):
    config = _config(params=("gamma:0.99",), zoo_args=("--eval-env-kwargs", "max_num_frames_per_episode:200"))
    run = config.runs(tmp_path)[0]
    assert (run.game, run.seed, run.env_id) == ("Pong", 0, "PongNoFrameskip-v4")
    command = suite_runs.build_command(config, run, ENTRY, None, "cpu", 1)
    assert command[:3] == ENTRY and "-i" not in command
    expected = {
        "--env": "PongNoFrameskip-v4",
        "--seed": "0",
        "-n": "300",
        "--save-freq": "100",
        "-f": str(run.zoo_folder),
    }
    assert {flag: command[command.index(flag) + 1] for flag in expected} == expected
    assert "--save-replay-buffer" in command and command[-2:] == ["-params", "gamma:0.99"]
    checkpoint = suite_runs.Checkpoint(100, tmp_path / "rl_model_100_steps.zip", tmp_path / "rb.pkl")
    command = suite_runs.build_command(config, run, ENTRY, checkpoint, "cuda", 2)
    assert command[command.index("-i") + 1] == str(checkpoint.model)
    assert command[command.index("-n") + 1] == "200"  # the remaining steps: the counter continues from 100
    assert command[command.index("--device") + 1] == "cuda" and command[command.index("--num-threads") + 1] == "2"


def _checkpoint_files(folder: Path, steps: int, replay: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rl_model_{steps}_steps.zip").write_bytes(b"model")
    if replay:
        (folder / f"rl_model_replay_buffer_{steps}_steps.pkl").write_bytes(b"replay")


def test_resume_checkpoint_is_the_latest_with_its_replay_below_the_budget(tmp_path):
    run = _config().runs(tmp_path)[0]
    first, second = (run.zoo_folder / "iris" / f"{run.env_id}_{n}" for n in (1, 2))
    assert run.next_attempt_folder() == first and suite_runs.resume_checkpoint(run, 300) is None
    _checkpoint_files(first, 100)
    _checkpoint_files(first, 200, replay=False)  # killed before its replay buffer was written
    _checkpoint_files(second, 200)
    _checkpoint_files(second, 300)  # at the budget: never resumed from (-n 0 means RL Zoo's default)
    assert run.next_attempt_folder().name == f"{run.env_id}_3"
    assert [c.steps for c in suite_runs.checkpoints(run)] == [100, 200, 300]
    latest = suite_runs.resume_checkpoint(run, 300)
    assert latest.steps == 200 and latest.model.parent == second
    assert suite_runs.resume_checkpoint(run, 300, frozenset({str(latest.model)})).steps == 100
    assert zoo.checkpoint_replay_buffer_path(str(first / "rl_model_100_steps.zip")) == str(
        first / "rl_model_replay_buffer_100_steps.pkl"
    )
    assert zoo.checkpoint_replay_buffer_path(str(first / "rl_model_200_steps.zip")) is None
    assert zoo.checkpoint_replay_buffer_path(str(first / "PongNoFrameskip-v4.zip")) is None


def _evaluations(folder: Path, timesteps: list[int], returns: list[list[float]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "evaluations.npz", timesteps=np.array(timesteps), results=np.array(returns))


def test_stitched_evaluations_keep_what_the_resumed_lineage_saw(tmp_path):
    run = _config().runs(tmp_path)[0]
    first, second = (run.zoo_folder / "iris" / f"{run.env_id}_{n}" for n in (1, 2))
    # Attempt 1 evaluated at 100 and 200 but its last checkpoint was at 100; attempt 2 resumed from there.
    _evaluations(first, [100, 200], [[1.0, 3.0], [9.0, 9.0]])
    _evaluations(second, [200, 300], [[4.0, 6.0], [7.0, 7.0]])
    state = {
        "state": "finished",
        "attempts": [
            {"zoo_folder": str(first), "resumed_from_steps": 0},
            {"zoo_folder": str(second), "resumed_from_steps": 100},
        ],
    }
    timesteps, returns = suite_runs.stitched_evaluations(run, state)
    assert timesteps.tolist() == [100, 200, 300]
    assert returns.mean(axis=1).tolist() == [2.0, 5.0, 7.0]


def test_logged_and_model_steps(tmp_path):
    log = tmp_path / "attempt1.log"
    log.write_text("|    total_timesteps               | 100      |\n...\n|    total_timesteps | 150      |\n")
    assert suite_runs.logged_steps(log) == 150 and suite_runs.logged_steps(tmp_path / "none.log") is None
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.zip", "w") as archive:
        archive.writestr("data", json.dumps({"num_timesteps": 4321}))
    assert suite_runs.model_steps(tmp_path / "m.zip") == 4321


@pytest.mark.parametrize(
    ("value", "cluster", "expected"), [("auto", 0, 0.0), ("auto", 8, 1.0), ("0.25", 1, 0.25), (2, 4, 2.0)]
)
def test_gpus_per_run(value, cluster, expected):
    assert resolve_gpus_per_run(value, cluster) == expected


@pytest.mark.parametrize(("value", "cluster"), [("many", 1), (-1, 1), (1, 0), (1.5, 4)])
def test_gpus_per_run_rejects_bad_values(value, cluster):
    with pytest.raises(ValueError, match="gpus_per_run"):
        resolve_gpus_per_run(value, cluster)


# --------------------------------------------------------------------------------------------------
# Report from fake finished runs
# --------------------------------------------------------------------------------------------------
def _fake_finished_runs(out: Path, config: SuiteConfig, finals: dict, final_evaluations: bool) -> None:
    """Finished runs whose last evaluation (at the budget) has mean return ``finals[(game, seed)]``, and whose final
    evaluation (if ``final_evaluations``) has that + 100; runs missing from ``finals`` failed."""
    for run in config.runs(out):
        folder = run.zoo_folder / "iris" / f"{run.env_id}_1"
        final = finals.get((run.game, run.seed))
        if final is None:
            suite_runs.update_state(run, suite_runs.read_state(run), state="failed", error="boom")
            continue
        _evaluations(folder, [100, 300], [[0.0, 0.0], [final - 1, final + 1]])
        if final_evaluations:
            suite_runs.write_json(run.final_evaluation_path, {"mean_return": final + 100, "episodes": 2})
        attempt = {"zoo_folder": str(folder), "resumed_from_steps": 0}
        suite_runs.update_state(run, suite_runs.read_state(run), state="finished", attempts=[attempt])


FINALS = {("Pong", 0): -21.0, ("Pong", 1): -15.0, ("Pong", 2): -18.0, ("Breakout", 0): 2.0, ("Breakout", 1): 5.0}


def test_report_table_and_aggregates_from_the_last_evaluations(tmp_path):
    pytest.importorskip("rliable")
    from sb3_iris.suite.report import write_report

    config = _config(seeds=(0, 1, 2), final_eval_episodes=0)
    _fake_finished_runs(tmp_path, config, FINALS, final_evaluations=False)  # Breakout seed 2 failed: left out
    path = write_report(tmp_path, config, reps=100)
    text = path.read_text()
    assert "| Pong | n/a (0/3) | -18.0 ± 2.4 (3/3) | 14.6 ± 4.8 | -20.7 | 14.6 |" in text
    assert "| Breakout | n/a (0/3) | 3.5 ± 1.5 (2/3) | 83.7 ± 12.9 |" in text
    with open(path.parent / "results.csv") as f:
        rows = {row["game"]: row for row in csv.DictReader(f)}
    assert float(rows["Pong"]["hns_ours"]) == pytest.approx(human_normalized_score(-18.0, "Pong"))
    assert rows["Breakout"]["ours_scores"] == rows["Breakout"]["ours_budget_scores"] == "0:2.0000;1:5.0000"
    with open(path.parent / "aggregates.csv") as f:
        aggregates = {row["agent"]: row for row in csv.DictReader(f)}
    ours = aggregates["sb3-iris"]
    assert (ours["runs"], ours["games"], ours["superhuman_games"]) == ("2", "2", "0")  # 2 seeds of each game
    pairs = (("Pong", (-21, -15)), ("Breakout", (2, 5)))
    hns = np.array([[human_normalized_score(score, game) for score in scores] for game, scores in pairs])
    assert float(ours["mean"]) == pytest.approx(hns.mean())
    assert float(ours["mean_ci_low"]) <= float(ours["mean"]) <= float(ours["mean_ci_high"])
    assert aggregates["IRIS (published)"]["runs"] == "5"
    assert (path.parent / "performance_profile.png").stat().st_size > 1000


def test_report_scores_the_final_evaluations_when_the_suite_makes_them(tmp_path):
    pytest.importorskip("rliable")
    from sb3_iris.suite.report import write_report

    config = _config(seeds=(0, 1, 2))
    assert config.final_eval_episodes == 100  # the default: the paper's score is the final model's
    _fake_finished_runs(tmp_path, config, FINALS, final_evaluations=True)
    text = write_report(tmp_path, config, reps=100).read_text()
    assert "| Pong | 82.0 ± 2.4 (3/3) | -18.0 ± 2.4 (3/3) | 14.6 ± 4.8 |" in text
    assert f"| {human_normalized_score(82.0, 'Pong'):.3f} | 1.000 |" in text
    assert "100 episodes of the final model with the IRIS protocol" in text


def test_trained_model_and_evaluation_command(tmp_path):
    import zipfile

    config = _config(final_eval_max_steps=50)
    run = config.runs(tmp_path)[0]
    folder = run.zoo_folder / "iris" / f"{run.env_id}_2"
    folder.mkdir(parents=True)
    assert suite_runs.trained_model(run, config.budget) is None
    for steps in (200, 300):
        with zipfile.ZipFile(folder / f"{run.env_id}.zip", "w") as archive:
            archive.writestr("data", json.dumps({"num_timesteps": steps}))
        found = suite_runs.trained_model(run, config.budget)
        assert found == (folder / f"{run.env_id}.zip" if steps == 300 else None)
    command = suite_runs.evaluation_command(config, run, "python", found, "cpu")
    assert command[:4] == ["python", "-m", "sb3_iris.evaluate", str(found)]
    assert " ".join(command[4:]) == "--env PongNoFrameskip-v4 --episodes 100 --seed 0 --device cpu --json " + (
        "--max-episode-steps 50"
    )
    output = tmp_path / "eval.out"
    output.write_text('noise\n{"mean_return": -20.5, "episodes": 100}\n')
    assert suite_runs.parse_evaluation(output) == {"mean_return": -20.5, "episodes": 100}


# --------------------------------------------------------------------------------------------------
# End to end: Ray, real ALE games, an interrupted run resumed from its checkpoint
# --------------------------------------------------------------------------------------------------
BUDGET, SAVE_FREQ = 200, 100


def _suite_command(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "sb3_iris.suite", "run", "--out", str(out),
        "--games", "Pong", "Breakout", "--seeds", "0", "1",
        "--budget", str(BUDGET), "--save-freq", str(SAVE_FREQ), "--eval-freq", "100", "--eval-episodes", "1",
        "--num-cpus", "2", "--max-retries", "0", "--final-eval-episodes", "1", "--final-eval-max-steps", "50",
        "--zoo-args", "--eval-env-kwargs max_num_frames_per_episode:200",
        "--params", *TINY_PONG, "n_steps_per_epoch:50",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", RAY_AUTH_MODE="disabled")
    env.pop("SB3_IRIS_NO_ZOO_HOOK", None)
    return env


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_suite_resumes_an_interrupted_run_from_its_checkpoint(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("ale_py")
    pytest.importorskip("rliable")
    _require_installed_hook()
    out = tmp_path / "suite"
    pong = RunSpec("Pong", 0, "PongNoFrameskip-v4", out)
    first_checkpoint = pong.zoo_folder / "iris" / "PongNoFrameskip-v4_1" / "rl_model_replay_buffer_100_steps.pkl"

    driver = subprocess.Popen(
        _suite_command(out), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while not first_checkpoint.is_file() and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first_checkpoint.is_file(), f"no checkpoint at {SAVE_FREQ} steps:\n{driver.communicate()[0][-4000:]}"
    time.sleep(0.5)  # let the replay buffer file be written completely
    driver.send_signal(signal.SIGINT)  # Ctrl-C
    output, _ = driver.communicate(timeout=90)
    assert driver.returncode == 1 and "suite: interrupted" in output, output[-4000:]

    state = suite_runs.read_state(pong)
    assert state["state"] == "interrupted" and state["steps_done"] < BUDGET, state
    killed = state["attempts"][-1]
    assert not _alive(killed["pid"]), "the interrupted training process is still running"
    checkpoint = suite_runs.resume_checkpoint(pong, BUDGET)
    assert checkpoint is not None and checkpoint.steps >= SAVE_FREQ
    before = {run.name: suite_runs.read_state(run) for run in _config().runs(out)}

    second = subprocess.run(_suite_command(out), env=_env(), capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, (second.stdout + second.stderr)[-6000:]
    assert f"Pong seed 0: interrupted, starts from the checkpoint at {checkpoint.steps} env steps" in second.stdout

    state = suite_runs.read_state(pong)
    resumed = state["attempts"][-1]
    assert state["state"] == "finished" and state["steps_done"] == BUDGET
    assert len(state["attempts"]) == 2
    assert resumed["resumed_from"] == str(checkpoint.model) and resumed["resumed_from_steps"] == checkpoint.steps
    assert f"-i {checkpoint.model}" in resumed["command"] and f"-n {BUDGET - checkpoint.steps} " in resumed["command"]
    log = Path(resumed["log"]).read_text()
    assert f"Loading replay buffer of the checkpoint: {checkpoint.replay_buffer}" in log
    assert f"Continuing the step counter from {checkpoint.steps}" in log
    assert suite_runs.final_steps(pong, Path(resumed["zoo_folder"])) == BUDGET
    # Logged step counts of the resumed attempt start after the checkpoint, not at 0.
    assert min(int(s) for s in suite_runs._STEPS_PATTERN.findall(log)) > checkpoint.steps
    # One evaluation per 100 steps, in order, none twice; those after the checkpoint are the resumed attempt's.
    timesteps = suite_runs.stitched_evaluations(pong)[0]
    assert np.all(np.diff(timesteps) > 0) and set(timesteps) <= set(range(100, BUDGET + 1, 100))
    assert set(range(checkpoint.steps + 100, BUDGET + 1, 100)) <= set(timesteps)

    for run in _config().runs(out):
        state = suite_runs.read_state(run)
        assert state["state"] == "finished", (run.name, state)
        if before[run.name]["state"] == "finished":  # finished before the interruption: skipped
            assert len(state["attempts"]) == 1 and f"{run.name}: finished" in second.stdout

    status = subprocess.run(
        [sys.executable, "-m", "sb3_iris.suite", "status", "--out", str(out), "--json"],
        env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = json.loads(status.stdout)
    assert [(r["game"], r["seed"], r["state"], r["steps"]) for r in rows] == [
        (g, s, "finished", BUDGET) for g in ("Pong", "Breakout") for s in (0, 1)
    ]

    report = subprocess.run(
        [sys.executable, "-m", "sb3_iris.suite", "report", "--out", str(out), "--bootstrap-reps", "200"],
        env=_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-4000:]
    with open(out / "report" / "results.csv") as f:
        rows = {row["game"]: row for row in csv.DictReader(f)}
    for game in ("Pong", "Breakout"):
        finals = []
        for seed in (0, 1):
            run = RunSpec(game, seed, f"{game}NoFrameskip-v4", out)
            last_attempt = Path(suite_runs.read_state(run)["attempts"][-1]["zoo_folder"])
            with np.load(last_attempt / "evaluations.npz") as data:
                assert int(data["timesteps"][-1]) == BUDGET
                finals.append(float(np.mean(data["results"][-1])))
        budget_scores = ";".join(f"{seed}:{score:.4f}" for seed, score in enumerate(finals))
        assert rows[game]["ours_budget_scores"] == budget_scores
        # The primary score: the final evaluation of the final model (IRIS protocol, 1 episode of 50 steps here).
        evaluations = [
            json.loads(RunSpec(game, seed, f"{game}NoFrameskip-v4", out).final_evaluation_path.read_text())
            for seed in (0, 1)
        ]
        assert [e["episodes"] for e in evaluations] == [1, 1] and all(e["mean_length"] <= 50 for e in evaluations)
        scores = [e["mean_return"] for e in evaluations]
        assert float(rows[game]["ours_mean"]) == pytest.approx(np.mean(scores))
        assert float(rows[game]["ours_std"]) == pytest.approx(np.std(scores))
        reference = ATARI_SCORES[game]
        expected_hns = (np.mean(scores) - reference.random) / (reference.human - reference.random)
        assert float(rows[game]["hns_ours"]) == pytest.approx(expected_hns)
        assert float(rows[game]["iris_published"]) == IRIS_PAPER_SCORES[game]
    assert "| sb3-iris | 2 x 2 |" in (out / "report" / "results.md").read_text()
    assert (out / "report" / "performance_profile.png").is_file()


@pytest.mark.slow
def test_a_run_that_keeps_failing_is_retried_and_shows_its_error(tmp_path):
    """About 40 s: a Ray instance and two attempts of a run whose hyperparameters IRIS refuses."""
    pytest.importorskip("ray")
    pytest.importorskip("ale_py")
    _require_installed_hook()
    out = tmp_path / "suite"
    command = [
        sys.executable, "-m", "sb3_iris.suite", "run", "--out", str(out), "--games", "Pong", "--seeds", "3",
        "--budget", "200", "--save-freq", "100", "--num-cpus", "1", "--max-retries", "1",
        "--params", *TINY_PONG, "n_steps_per_epoch:-5",
    ]  # fmt: skip
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Pong seed 3: failed after 2 attempts" in result.stdout, result.stdout
    run = RunSpec("Pong", 3, "PongNoFrameskip-v4", out)
    state = suite_runs.read_state(run)
    assert state["state"] == "failed" and len(state["attempts"]) == 2
    assert all(a["returncode"] not in (0, None) and a["resumed_from"] is None for a in state["attempts"])
    status = subprocess.run(
        [sys.executable, "-m", "sb3_iris.suite", "status", "--out", str(out)],
        env=_env(), capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "failed" in status.stdout and "Pong seed 3 failed: attempt 2 exited with status" in status.stdout
    assert "n_steps_per_epoch" in status.stdout  # the end of the log: IRIS's error names the argument
