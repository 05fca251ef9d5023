"""``run``: the suite's runs as Ray tasks, one RL Zoo training process each, resumed from their checkpoints.

Each attempt of a run is one Ray task (``num_cpus=cpus_per_run``, ``num_gpus=gpus_per_run``) that starts the
RL Zoo command of :func:`sb3_iris.suite.runs.build_command` as a subprocess and waits for it. A new attempt
continues from the run's latest checkpoint (``-i``, with the replay buffer saved next to it). The driver keeps
every unfinished run busy until it finishes or used ``1 + max_retries`` attempts in this invocation.

Stopping: Ctrl-C or SIGTERM (a scheduler's time limit) cancels the tasks; each task stops its training process
and records the run as ``interrupted``. A training process also dies with the Ray worker that started it (Linux
``PR_SET_PDEATHSIG``), so a lost driver or worker leaves no orphan behind that would keep writing to the run.

The suite folder must be on a filesystem that every node sees (NFS, Lustre, ...): tasks write there directly.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

from sb3_iris.suite import runs as suite_runs
from sb3_iris.suite.runs import RunSpec, SuiteConfig

__all__ = ["SuiteLock", "resolve_gpus_per_run", "run_attempt", "run_suite"]

_STOP_GRACE_SECONDS = 20.0
_LOCAL_RAY_STARTS = 3


class SuiteLock:
    """An exclusive lock on a suite folder (``suite.lock``), held by the driver of ``run``.

    :param out: the suite folder
    :raises RuntimeError: if another driver holds it
    """

    def __init__(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "suite.lock"
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open as long as the lock
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise RuntimeError(f"another `suite run` is using {out} (it holds {self.path})") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{socket.gethostname()} {os.getpid()}\n")
        self._file.flush()

    @staticmethod
    def held(out: Path) -> bool:
        """Whether a driver holds the lock of ``out`` now."""
        path = out / "suite.lock"
        if not path.is_file():
            return False
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
            return False

    def release(self) -> None:
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the training process gets SIGKILL when the thread that started it (the Ray worker) dies."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the training process group, SIGKILL it if it is still there after a grace period."""
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_attempt(
    config_json: dict[str, Any], game: str, seed: int, out: str, entry_point: list[str], device: str, threads: int
) -> dict[str, Any]:
    """One attempt of one run (the body of the Ray task): resume from the latest checkpoint, train, evaluate.

    Training is skipped when an earlier attempt already saved the final model (only its final evaluation failed
    or was interrupted); the final evaluation (``final_eval_episodes``) runs ``python -m sb3_iris.evaluate`` on
    the final model and writes ``final_evaluation.json``.

    :param config_json: the suite's :class:`SuiteConfig` as JSON
    :param game: the run's game
    :param seed: the run's seed
    :param out: the suite folder
    :param entry_point: interpreter arguments of rl_zoo3.train without the interpreter (``["-m", "rl_zoo3.train"]``)
    :param device: torch device of the run
    :param threads: torch threads of the run
    :return: ``state`` (``finished`` / ``failed``), ``steps`` and ``error``; raises when cancelled (``interrupted``)
    """
    config = SuiteConfig.from_json(config_json)
    run = RunSpec(game, seed, config.env_id(game), Path(out))
    state = suite_runs.read_state(run)
    attempts = list(state.get("attempts", []))
    number = len(attempts) + 1
    log = run.attempt_log(number)
    attempt: dict[str, Any] = {
        "number": number,
        "host": socket.gethostname(),
        "log": str(log),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    run.folder.mkdir(parents=True, exist_ok=True)
    trained = suite_runs.trained_model(run, config.budget)
    start = time.perf_counter()
    with open(log, "w") as log_file:
        attempt_process = _AttemptProcess(run, config, state, attempts, attempt, log_file, env, start)
        if trained is None:
            damaged = frozenset(a["damaged_checkpoint"] for a in attempts if a.get("damaged_checkpoint"))
            resume = suite_runs.resume_checkpoint(run, config.budget, damaged)
            command = suite_runs.build_command(config, run, [sys.executable, *entry_point], resume, device, threads)
            attempt.update(
                command=suite_runs.display_command(command),
                resumed_from=str(resume.model) if resume else None,
                resumed_from_steps=resume.steps if resume else 0,
                zoo_folder=str(run.next_attempt_folder()),
            )
            attempt["returncode"] = attempt_process.run(command, log_file)
            attempt["wall_seconds"] = time.perf_counter() - start
            if not _finished(run, attempt, config.budget):
                return attempt_process.fail(_training_error(run, attempt, config.budget, log))
            trained = Path(attempt["zoo_folder"]) / f"{run.env_id}.zip"
        else:
            attempt["trained_model"] = str(trained)  # trained by an earlier attempt: only the evaluation is left
        if config.final_eval_episodes > 0 and not run.final_evaluation_path.is_file():
            command = suite_runs.evaluation_command(config, run, sys.executable, trained, device)
            attempt["evaluation_command"] = suite_runs.display_command(command)
            output = run.folder / "final_evaluation.out"
            with open(output, "w") as stdout:
                attempt["evaluation_returncode"] = attempt_process.run(command, stdout)
            attempt["wall_seconds"] = time.perf_counter() - start
            result = suite_runs.parse_evaluation(output)
            if attempt["evaluation_returncode"] != 0 or result is None:
                error = f"attempt {number}: the final evaluation exited with status {attempt['evaluation_returncode']}"
                return attempt_process.fail(f"{error}; end of {log}:\n{suite_runs.log_tail(log)}")
            suite_runs.write_json(run.final_evaluation_path, result)
    suite_runs.update_state(
        run, state, state="finished", attempts=[*attempts, attempt], steps_done=config.budget, error=None
    )
    return {"state": "finished", "steps": config.budget, "error": None}


class _AttemptProcess:
    """Runs an attempt's subprocesses (training, evaluation) and records the attempt when it stops or fails."""

    def __init__(
        self,
        run: RunSpec,
        config: SuiteConfig,
        state: dict[str, Any],
        attempts: list[dict[str, Any]],
        attempt: dict[str, Any],
        log_file: Any,
        env: dict[str, str],
        start: float,
    ) -> None:
        self.run_spec, self.config, self.state, self.attempts, self.attempt = run, config, state, attempts, attempt
        self.log_file, self.env, self.start = log_file, env, start

    def run(self, command: list[str], stdout: Any) -> int:
        """Start ``command`` (stderr to the attempt log) and wait for it; on cancellation stop it and re-raise."""
        self.log_file.write(f"# {suite_runs.display_command(command)}\n")
        self.log_file.flush()
        process = subprocess.Popen(
            command,
            stdout=stdout,
            stderr=self.log_file,
            env=self.env,
            start_new_session=True,  # a terminal's Ctrl-C reaches the driver, which stops the run itself
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self.attempt["pid"] = process.pid
        self.state = suite_runs.update_state(
            self.run_spec, self.state, state="running", attempts=[*self.attempts, self.attempt], error=None
        )
        try:
            return _wait(process)
        except BaseException:  # Ray's cancellation (KeyboardInterrupt), SystemExit
            _stop(process)
            self.attempt.update(returncode=process.returncode, wall_seconds=time.perf_counter() - self.start)
            run, budget = self.run_spec, self.config.budget
            trained = "zoo_folder" not in self.attempt or _finished(run, self.attempt, budget)
            steps = budget if trained else _steps_done(run, self.attempt, Path(self.attempt["log"]))
            suite_runs.update_state(
                run, self.state, state="interrupted", attempts=[*self.attempts, self.attempt], steps_done=steps
            )
            raise

    def fail(self, error: str) -> dict[str, Any]:
        """Record the attempt as failed with ``error``."""
        run, log = self.run_spec, Path(self.attempt["log"])
        if "zoo_folder" in self.attempt:
            self.attempt["damaged_checkpoint"] = suite_runs.damaged_checkpoint(self.attempt, log)
        trained = suite_runs.trained_model(run, self.config.budget) is not None
        steps = self.config.budget if trained else _steps_done(run, self.attempt, log)
        suite_runs.update_state(
            run, self.state, state="failed", attempts=[*self.attempts, self.attempt], steps_done=steps, error=error
        )
        return {"state": "failed", "steps": steps, "error": error}


def _training_error(run: RunSpec, attempt: dict[str, Any], budget: int, log: Path) -> str:
    steps = _steps_done(run, attempt, log)
    error = f"attempt {attempt['number']} exited with status {attempt['returncode']}"
    if attempt["returncode"] == 0:
        error += f" after {steps} of {budget} env steps (the training process stopped early)"
    return f"{error}; end of {log}:\n{suite_runs.log_tail(log)}"


def _wait(process: subprocess.Popen) -> int:
    """Wait for the training process in short slices: Ray's cancellation (an exception raised in this thread)
    is only delivered between Python bytecodes, never inside one blocking ``waitpid``."""
    while True:
        try:
            return process.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def _finished(run: RunSpec, attempt: dict[str, Any], budget: int) -> bool:
    """Whether an attempt ended the run: exit status 0 and a final model at the budget."""
    final = suite_runs.final_steps(run, Path(attempt["zoo_folder"]))
    return attempt.get("returncode") == 0 and final is not None and final >= budget


def _steps_done(run: RunSpec, attempt: dict[str, Any], log: Path) -> int:
    """Env steps a run has reached: the last logged count, or its latest checkpoint."""
    logged = suite_runs.logged_steps(log) or 0
    latest = suite_runs.checkpoints(run)
    return max(logged, latest[-1].steps if latest else 0, int(attempt.get("resumed_from_steps") or 0))


def resolve_gpus_per_run(value: Union[str, float], cluster_gpus: float) -> float:
    """``auto``: one GPU per run if the cluster has GPUs, else 0; otherwise the number (fractions pack runs).

    :raises ValueError: for a negative number, more than the cluster has, or a string other than ``auto``
    """
    if value == "auto":
        return 1.0 if cluster_gpus > 0 else 0.0
    try:
        gpus = float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"gpus_per_run must be 'auto' or a number of GPUs (0.25 packs 4 runs per GPU), got {value!r}"
        ) from None
    if gpus < 0 or (gpus > 0 and gpus > cluster_gpus) or (gpus > 1 and not float(gpus).is_integer()):
        raise ValueError(
            f"gpus_per_run must be 0, a fraction of 1, or a whole number of GPUs up to the cluster's {cluster_gpus:g}, "
            f"got {value!r}"
        )
    return gpus


def _init_ray(address: Optional[str], num_cpus: Optional[int], num_gpus: Optional[int]) -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError('the suite runs on Ray: pip install "sb3-iris[cluster]"') from None
    if address is not None and (num_cpus is not None or num_gpus is not None):
        raise ValueError("--num-cpus / --num-gpus size a local Ray instance; with --address the cluster has its own")
    for attempt in range(1, _LOCAL_RAY_STARTS + 1):
        try:
            ray.init(
                address=address,
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
            return ray
        except Exception as exc:
            # Ray gives a new local node 30 s to register; on an overloaded machine it can need more.
            if address is not None or "timed out during startup" not in str(exc) or attempt == _LOCAL_RAY_STARTS:
                raise
            print(f"suite: the local Ray instance did not start in time ({exc}); starting it again", flush=True)
            ray.shutdown()
            _kill_ray_children()
    raise AssertionError("unreachable")


def _kill_ray_children() -> None:
    """Linux: SIGKILL the Ray processes (GCS, raylet, agents) that a failed local start left as children of this
    process; ``ray.shutdown`` does not know them, and they would compete with the next start."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if parent == me and b"/ray/" in command:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_suite(
    config: SuiteConfig,
    out: Path,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    num_gpus: Optional[int] = None,
    cpus_per_run: float = 1.0,
    gpus_per_run: Union[str, float] = "auto",
    max_retries: int = 2,
) -> int:
    """Train every unfinished run of ``config`` on Ray; returns the number of runs not finished.

    :param config: the suite
    :param out: the suite folder
    :param address: Ray cluster address (``auto``: the cluster this machine belongs to); None: a local instance
    :param num_cpus: CPUs of a local instance (default: all)
    :param num_gpus: GPUs of a local instance (default: all)
    :param cpus_per_run: CPUs reserved per run (also its torch threads, rounded up)
    :param gpus_per_run: GPUs per run (see :func:`resolve_gpus_per_run`)
    :param max_retries: further attempts of a failing run in this invocation
    """
    if cpus_per_run <= 0:
        raise ValueError(f"cpus_per_run must be > 0, got {cpus_per_run}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries}")
    from sb3_iris.suite.zoo_runs import zoo_entry_point

    lock = SuiteLock(out)
    try:
        config = _save_config(config, out)
        entry_point = zoo_entry_point()[1:]
        ray = _init_ray(address, num_cpus, num_gpus)
        previous_handler = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            gpus = resolve_gpus_per_run(gpus_per_run, ray.cluster_resources().get("GPU", 0.0))
            device = "cuda" if gpus > 0 else "cpu"
            threads = max(1, math.ceil(cpus_per_run))
            task = ray.remote(run_attempt).options(num_cpus=cpus_per_run, num_gpus=gpus, max_retries=0)
            print(
                f"suite: {len(config.games)} games x {len(config.seeds)} seeds, {config.budget} env steps each, "
                f"{cpus_per_run:g} CPU / {gpus:g} GPU per run ({device}); cluster {ray.cluster_resources()}",
                flush=True,
            )
            return _drive(ray, task, config, out, entry_point, device, threads, max_retries)
        finally:
            signal.signal(signal.SIGTERM, previous_handler)
            ray.shutdown()
    finally:
        lock.release()


def _save_config(config: SuiteConfig, out: Path) -> SuiteConfig:
    """Write ``suite.json``; an existing one must have the same run settings (games and seeds may change)."""
    path = out / "suite.json"
    if path.is_file():
        import json

        existing = SuiteConfig.from_json(json.loads(path.read_text()))
        if existing.run_settings() != config.run_settings():
            changed = sorted(k for k, v in config.run_settings().items() if existing.run_settings()[k] != v)
            raise ValueError(
                f"{out} holds a suite with other run settings ({', '.join(changed)}: "
                f"{ {k: existing.run_settings()[k] for k in changed} }); use another --out or the same settings"
            )
    suite_runs.write_json(path, config.to_json())
    return config


def _drive(
    ray: Any,
    task: Any,
    config: SuiteConfig,
    out: Path,
    entry_point: list[str],
    device: str,
    threads: int,
    max_retries: int,
) -> int:
    in_flight: dict[Any, RunSpec] = {}
    tries: dict[str, int] = {}
    unfinished: list[RunSpec] = []

    def submit(run: RunSpec) -> None:
        tries[run.name] = tries.get(run.name, 0) + 1
        state = suite_runs.read_state(run)
        suite_runs.update_state(run, state, state="queued")
        ref = task.remote(config.to_json(), run.game, run.seed, str(out), entry_point, device, threads)
        in_flight[ref] = run

    for run in config.runs(out):
        state = suite_runs.read_state(run)
        if state["state"] == "finished":
            print(f"  {run.name}: finished ({state.get('steps_done')} env steps), skipped", flush=True)
            continue
        resume = suite_runs.resume_checkpoint(run, config.budget)
        start = f"from the checkpoint at {resume.steps} env steps" if resume else "from scratch"
        print(f"  {run.name}: {state['state']}, starts {start}", flush=True)
        submit(run)
    try:
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # the worker or its node died, or the task raised
                result = {"state": "failed", "error": f"Ray task failed: {exc!r}"}
                state = suite_runs.read_state(run)
                suite_runs.update_state(run, state, state="failed", error=result["error"])
            if result["state"] == "finished":
                print(f"  {run.name}: finished ({result['steps']} env steps)", flush=True)
            elif tries[run.name] <= max_retries:
                print(f"  {run.name}: attempt failed, retrying ({tries[run.name]} of {1 + max_retries})", flush=True)
                submit(run)
            else:
                print(f"  {run.name}: failed after {tries[run.name]} attempts; see `status`", flush=True)
                unfinished.append(run)
    except KeyboardInterrupt:
        print("suite: interrupted; stopping the runs (they resume from their checkpoints next time)", flush=True)
        for ref in in_flight:
            ray.cancel(ref)
        ray.wait(list(in_flight), num_returns=len(in_flight), timeout=_STOP_GRACE_SECONDS + 10)
        for run in in_flight.values():
            state = suite_runs.read_state(run)
            if state["state"] in ("queued", "running"):
                suite_runs.update_state(run, state, state="interrupted")
        return len(in_flight) + len(unfinished)
    return len(unfinished)
