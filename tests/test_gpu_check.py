"""benchmarks/gpu_check.sh: its argument checks, and (slow) its whole ``--device cpu`` dry run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--device", "tpu"], "--device must be cuda or cpu, got 'tpu'"), (["--fast"], "unknown argument '--fast'")],
)
def test_bad_arguments_are_rejected(args, message, tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), *args, "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.slow
def test_cpu_dry_run_writes_every_step(tmp_path):
    """About 6 minutes on 2 CPU cores: the CUDA tests on the CPU, 4 component timings, 2 Pong epochs."""
    out = tmp_path / "gpu_check"
    result = subprocess.run(
        ["bash", str(SCRIPT), "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    names = [step["name"] for step in summary["steps"]]
    assert names == [
        "tests",
        *(f"components_{d}_compile_{c}" for d in ("float32", "bfloat16") for c in ("off", "on")),
        "epoch_pong_mixed_precision_off",
        "epoch_pong_mixed_precision_on",
    ]
    assert summary["all_passed"] and summary["environment"]["torch"]
    steps = {step["name"]: step for step in summary["steps"]}
    assert steps["components_bfloat16_compile_on"]["result"]["options"]["compile_imagination"] is True
    assert steps["components_float32_compile_off"]["result"]["options"]["mixed_precision"] is False
    assert steps["epoch_pong_mixed_precision_on"]["result"]["projected_full_run_hours"] > 0
    assert (out / "parts.tar.gz").stat().st_size > 0 and (out / "parts" / "tests.xml").is_file()
