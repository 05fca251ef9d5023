"""IRIS on an accelerator: tiny training, bf16 autocast, compiled imagination, save/load, on ``SB3_IRIS_TEST_DEVICE``.

The device is ``cuda`` unless ``SB3_IRIS_TEST_DEVICE`` names another one; the tests skip when it is not available
(CI has no GPU). ``benchmarks/gpu_check.sh`` runs them on the GPU, and its ``--device cpu`` dry run on the CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from conftest import ColorBoxEnv, tiny_iris_kwargs

from sb3_iris import IRIS

DEVICE = os.environ.get("SB3_IRIS_TEST_DEVICE", "cuda")


def _available(device: str) -> bool:
    if device.startswith("cuda"):
        return torch.cuda.is_available()
    return device == "cpu"


pytestmark = pytest.mark.skipif(not _available(DEVICE), reason=f"device {DEVICE!r} is not available")


def _model(**overrides) -> IRIS:
    return IRIS("CnnPolicy", ColorBoxEnv(), seed=0, **tiny_iris_kwargs(image=True, device=DEVICE, **overrides))


def _parameters_on_device(model: IRIS) -> set[str]:
    return {p.device.type for p in model.policy.parameters()}


@pytest.mark.parametrize("mixed_precision", [False, True], ids=["fp32", "bf16"])
def test_learn_on_the_device(mixed_precision):
    if mixed_precision and DEVICE.startswith("cuda") and not torch.cuda.is_bf16_supported():
        pytest.skip("bf16 is not supported by this GPU")
    model = _model(mixed_precision=mixed_precision)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(100)
    assert _parameters_on_device(model) == {torch.device(DEVICE).type}
    assert model.num_timesteps == 100 and model.replay_buffer.n_steps == 100
    changed = [not torch.equal(a, b) for a, b in zip(before, model.policy.parameters())]
    assert any(changed), "no parameter changed in training"
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_compiled_imagination_trains_on_the_device():
    model = _model(compile_imagination=True)
    model.learn(100)
    assert model.num_timesteps == 100
    assert all(torch.isfinite(p).all() for p in model.policy.parameters())


def test_save_load_and_predict_on_the_device(tmp_path):
    model = _model()
    model.learn(50)
    model.save(tmp_path / "model.zip")
    loaded = IRIS.load(tmp_path / "model.zip", device=DEVICE)
    assert _parameters_on_device(loaded) == {torch.device(DEVICE).type}
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values()):
        assert torch.equal(a.cpu(), b.cpu())
    obs, _ = ColorBoxEnv().reset(seed=1)
    action, state = loaded.predict(obs, deterministic=True)
    assert np.asarray(action).shape == () and 0 <= int(action) < 2 and state is not None
