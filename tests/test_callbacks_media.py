"""IRIS callbacks (reconstructions, imagined rollouts, world-model evaluation) and the media helpers.

The callbacks run during a tiny real training run; their TensorBoard event files are read back with
TensorBoard's ``EventAccumulator``.
"""

from __future__ import annotations

import csv
import io
import os

import envs_for_tests
import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import recording_logger, tiny_iris_kwargs
from PIL import Image as PILImage
from stable_baselines3.common.logger import configure

from sb3_iris import IRIS
from sb3_iris.callbacks import (
    ImaginedRolloutCallback,
    ReconstructionCallback,
    WorldModelEvalCallback,
    eval_mode,
    segments_from_steps,
)
from sb3_iris.visualize import (
    annotate,
    encode_gif,
    hstack,
    log_tensorboard_video,
    make_grid,
    to_uint8_images,
    torch_tensorboard_video_supported,
    upscale,
    write_video,
)

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

STEPS_PER_EPOCH = 30
EPOCHS = 3
HORIZON = 3
EVAL_KEYS = (
    "iris_eval/next_token_accuracy",
    "iris_eval/reward_sign_accuracy",
    "iris_eval/end_accuracy",
    "iris_eval/reconstruction_l1",
    "iris_eval/codebook_usage",
    "iris_eval/codebook_perplexity",
    "iris_eval/observation_loss",
    "iris_eval/reward_loss",
    "iris_eval/end_loss",
)


def make_model(seed: int = 0, **overrides) -> IRIS:
    kwargs = tiny_iris_kwargs(True, 16, n_steps_per_epoch=STEPS_PER_EPOCH, imagination_horizon=HORIZON)
    kwargs.update(overrides)
    return IRIS("CnnPolicy", gym.make(envs_for_tests.TINY_GRID_ID), seed=seed, **kwargs)


def read_events(folder: str) -> EventAccumulator:
    accumulator = EventAccumulator(folder, size_guidance={"images": 0, "tensors": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """Three epochs of training with the three callbacks logging after every epoch."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = str(tmp_path_factory.mktemp("iris_callbacks"))
    media = os.path.join(folder, "media")
    model = make_model()
    model.set_logger(configure(folder, ["csv", "tensorboard"]))
    callbacks = [
        ReconstructionCallback(every_n_epochs=1, n_frames=8, save_dir=media, seed=0),
        ImaginedRolloutCallback(every_n_epochs=1, n_rollouts=3, save_dir=media, fps=4, file_format="gif"),
        WorldModelEvalCallback(every_n_epochs=1, n_segments=16, seed=0),
    ]
    model.learn(STEPS_PER_EPOCH * EPOCHS, callback=callbacks)
    model.logger.close()
    torch.set_num_threads(threads)
    return folder, media, model, callbacks


def test_reconstruction_image_in_tensorboard(trained_run):
    folder, media, _, _ = trained_run
    events = read_events(folder)
    assert "iris/reconstructions" in events.Tags()["images"]
    images = events.Images("iris/reconstructions")
    # After epochs 1 and 2 (dumped at the end of epochs 2 and 3), and the final networks at training end.
    assert [image.step for image in images] == [60, 90, 90]
    grid = np.asarray(PILImage.open(io.BytesIO(images[-1].encoded_image_string)).convert("RGB"))
    # 8 frames of 16x16 upscaled 4x, 2 px padding: real frames on top, reconstructions below.
    assert grid.shape == (2 * (64 + 2) + 2, 8 * (64 + 2) + 2, 3)
    assert "iris/reconstruction_l1" in events.Tags()["scalars"]
    assert sorted(os.listdir(media))[:1] == ["imagined_epoch0001.gif"]
    assert os.path.exists(os.path.join(media, "reconstructions_epoch0002.png"))


def test_imagined_rollout_video_in_tensorboard(trained_run):
    folder, _, _, _ = trained_run
    events = read_events(folder)
    assert "iris/imagined_rollouts" in events.Tags()["images"]
    videos = events.Images("iris/imagined_rollouts")
    assert [video.step for video in videos] == [60, 90, 90]
    # SB3's TensorBoardOutputFormat writes a Video with SummaryWriter.add_video: an image summary whose encoded
    # string is an animated GIF (with moviepy >= 2 torch cannot encode it and our fallback writes the same summary).
    encoded = videos[-1].encoded_image_string
    assert encoded[:4] == b"GIF8"
    gif = PILImage.open(io.BytesIO(encoded))
    assert gif.n_frames == HORIZON
    assert (gif.width, gif.height) == (videos[-1].width, videos[-1].height)
    assert gif.width > 3 * 128  # three rollouts side by side, each upscaled to 128 px
    for key in ("iris/imagined_return", "iris/imagined_reward_sum", "iris/imagined_end_fraction"):
        assert key in events.Tags()["scalars"]


def test_imagined_rollout_gif_files(trained_run):
    _, media, _, callbacks = trained_run
    files = callbacks[1].saved_files
    assert [os.path.basename(path) for path in files] == [
        "imagined_epoch0001.gif",
        "imagined_epoch0002.gif",
        "imagined_epoch0003_final.gif",
    ]
    for path in files:
        gif = PILImage.open(path)
        assert gif.n_frames == HORIZON
        first = np.asarray(gif.convert("RGB"))
        assert first.shape[0] > 128 and first.std() > 0


def test_world_model_eval_scalars_in_csv_and_tensorboard(trained_run):
    folder, _, model, callbacks = trained_run
    with open(os.path.join(folder, "progress.csv")) as file:
        rows = list(csv.DictReader(file))
    evaluated = [row for row in rows if row.get("iris_eval/next_token_accuracy")]
    assert len(evaluated) == EPOCHS - 1  # after epochs 1 and 2; none at the end (no unseen data left)
    for row in evaluated:
        for key in EVAL_KEYS:
            assert row[key] != "", key
        for key in ("iris_eval/next_token_accuracy", "iris_eval/reward_sign_accuracy", "iris_eval/end_accuracy"):
            assert 0.0 <= float(row[key]) <= 1.0
        assert 0.0 < float(row["iris_eval/codebook_usage"]) <= 1.0
        assert 1.0 <= float(row["iris_eval/codebook_perplexity"]) <= model.policy.tokenizer.vocab_size
        # The held-out data is exactly the epoch's fresh collection: 30 steps cut into segments of 4.
        assert float(row["iris_eval/n_steps"]) == STEPS_PER_EPOCH
        assert float(row["iris_eval/n_segments"]) <= 16
    scalars = read_events(folder).Tags()["scalars"]
    for key in EVAL_KEYS:
        assert key in scalars
    assert set(callbacks[2].last_metrics) >= {key.split("/")[1] for key in EVAL_KEYS}


def test_world_model_eval_matches_compute_loss():
    """The evaluation's cross-entropies are the world model's training losses on the same segments."""
    model = make_model(seed=1)
    callback = WorldModelEvalCallback(every_n_epochs=1, n_segments=64, seed=0)
    model.learn(2 * STEPS_PER_EPOCH, callback=callback)
    assert callback.last_metrics["n_steps"] == STEPS_PER_EPOCH  # after epoch 1, on the 30 steps of epoch 2

    batch = model.replay_buffer.sample_segments(8, model.sequence_length, "both")
    policy = model.policy
    with eval_mode(policy.tokenizer, policy.world_model), torch.no_grad():
        metrics = callback.evaluate_segments(
            batch.observations, batch.actions, batch.rewards, batch.terminations, batch.mask_padding
        )
        tokens = model.segment_tokens(batch.observations, batch.env_indices, batch.time_indices, batch.mask_padding)
        losses = policy.world_model.compute_loss(
            tokens,
            torch.as_tensor(batch.actions).long(),
            torch.as_tensor(batch.rewards).float(),
            torch.as_tensor(batch.terminations),
            torch.as_tensor(batch.mask_padding),
        )
    assert metrics["observation_loss"] == pytest.approx(losses.observations.item(), rel=1e-4)
    assert metrics["reward_loss"] == pytest.approx(losses.rewards.item(), rel=1e-4)
    assert metrics["end_loss"] == pytest.approx(losses.ends.item(), rel=1e-4)
    assert metrics["n_steps"] == batch.mask_padding.sum()
    assert 0.0 <= metrics["next_token_accuracy"] <= 1.0


def test_callbacks_do_not_change_training():
    """Same seed, with or without the callbacks: the same trained parameters (random states are preserved)."""
    epochs = 2
    plain = make_model(seed=3)
    plain.learn(STEPS_PER_EPOCH * epochs)
    observed = make_model(seed=3)
    logger, _ = recording_logger()
    observed.set_logger(logger)
    observed.learn(
        STEPS_PER_EPOCH * epochs,
        callback=[
            ReconstructionCallback(every_n_epochs=1),
            ImaginedRolloutCallback(every_n_epochs=1, n_rollouts=2),
            WorldModelEvalCallback(every_n_epochs=1),
        ],
    )
    for (name, a), (_, b) in zip(plain.policy.state_dict().items(), observed.policy.state_dict().items()):
        assert torch.equal(a, b), name
    assert observed.policy.actor_critic.training == plain.policy.actor_critic.training


def test_vector_observations_log_stats_without_video():
    model = IRIS("MlpPolicy", "CartPole-v1", seed=0, **tiny_iris_kwargs(False, n_steps_per_epoch=STEPS_PER_EPOCH))
    logger, writer = recording_logger()
    model.set_logger(logger)
    rollouts = ImaginedRolloutCallback(every_n_epochs=1, n_rollouts=2)
    with pytest.warns(UserWarning, match="not images") as record:
        model.learn(
            3 * STEPS_PER_EPOCH,
            callback=[rollouts, ReconstructionCallback(every_n_epochs=1), WorldModelEvalCallback(every_n_epochs=1)],
        )
    assert sum("not images" in str(w.message) for w in record) == 1  # warned once
    assert {"iris/imagined_return", "iris/imagined_end_fraction", "iris/reconstruction_l1"} <= writer.keys
    assert "iris_eval/next_token_accuracy" in writer.keys
    assert "iris/reconstructions" not in writer.keys and "iris/imagined_rollouts" not in writer.keys


def test_segments_from_steps_cut_at_episode_ends_and_right_padded():
    # 2 envs x 7 steps; env 0 ends an episode at step 2 (truncated there: done but not terminated).
    n_steps, n_envs = 7, 2
    steps = []
    for t in range(n_steps):
        observations = np.array([[100 * env + t] for env in range(n_envs)], dtype=np.int64)  # env and time
        dones = np.array([t == 2, False])
        steps.append(
            (observations, np.full(n_envs, t), np.full(n_envs, 0.5, np.float32), np.zeros(n_envs, bool), dones)
        )
    batch = segments_from_steps(steps, length=3, n_segments=100, rng=np.random.default_rng(0))
    # env 0: [0, 3) then [3, 6), [6, 7); env 1: [0, 3), [3, 6), [6, 7)
    pieces = sorted(tuple(row[mask].ravel().tolist()) for row, mask in zip(batch["observations"], batch["mask"]))
    assert pieces == sorted([(0, 1, 2), (3, 4, 5), (6,), (100, 101, 102), (103, 104, 105), (106,)])
    assert batch["mask"].sum(1).tolist().count(1) == 2  # the two one-step pieces are right-padded
    for row, actions, mask in zip(batch["observations"], batch["actions"], batch["mask"]):
        assert mask[: mask.sum()].all()  # padding only after the real steps
        np.testing.assert_array_equal(actions[mask], row[mask].ravel() % 100)
        assert (batch["rewards"][~batch["mask"]] == 0).all()
    fewer = segments_from_steps(steps, length=3, n_segments=2, rng=np.random.default_rng(0))
    assert fewer["observations"].shape == (2, 3, 1)
    assert segments_from_steps([], length=3, n_segments=2, rng=np.random.default_rng(0)) is None


def test_every_n_epochs_and_wait_for_training():
    model = make_model(seed=2, world_model_start_after_epochs=2)
    logger, writer = recording_logger()
    model.set_logger(logger)
    model.learn(
        4 * STEPS_PER_EPOCH,
        callback=[
            ReconstructionCallback(every_n_epochs=2, log_on_training_end=False),
            WorldModelEvalCallback(every_n_epochs=1),
        ],
    )
    steps_with = {key: [r["_step"] for r in writer.records if key in r] for key in writer.keys}
    assert steps_with["iris/reconstructions"] == [90]  # after 2 epochs (4 is the end: not logged)
    assert steps_with["iris_eval/next_token_accuracy"] == [120]  # the world model trains from epoch 3


def test_callbacks_constructible_from_kwargs_and_rl_zoo():
    rl_zoo_utils = pytest.importorskip("rl_zoo3.utils")
    callbacks = rl_zoo_utils.get_callback_list(
        {
            "callback": [
                {"sb3_iris.callbacks.ReconstructionCallback": {"every_n_epochs": 5, "n_frames": 4}},
                {"sb3_iris.callbacks.ImaginedRolloutCallback": {"every_n_epochs": 5, "file_format": "mp4"}},
                "sb3_iris.callbacks.WorldModelEvalCallback",
            ]
        }
    )
    assert [type(c).__name__ for c in callbacks] == [
        "ReconstructionCallback",
        "ImaginedRolloutCallback",
        "WorldModelEvalCallback",
    ]
    assert callbacks[0].every_n_epochs == 5 and callbacks[0].n_frames == 4
    with pytest.raises(ValueError, match="every_n_epochs"):
        ReconstructionCallback(every_n_epochs=0)
    with pytest.raises(ValueError, match="file_format"):
        ImaginedRolloutCallback(file_format="avi")
    from stable_baselines3 import PPO

    with pytest.raises(TypeError, match="IRIS"):
        ReconstructionCallback().init_callback(PPO("MlpPolicy", "CartPole-v1", n_steps=8, batch_size=8))


# --------------------------------------------------------------------------------------------------
# Media helpers
# --------------------------------------------------------------------------------------------------


def test_image_helpers():
    x = torch.linspace(-1, 1, 2 * 3 * 4 * 4).view(2, 3, 4, 4)
    images = to_uint8_images(x)
    assert images.shape == (2, 4, 4, 3) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert to_uint8_images(np.zeros((5, 5, 1), dtype=np.uint8)).shape == (5, 5, 3)
    assert upscale(images, 3).shape == (2, 12, 12, 3)
    grid = make_grid(images, ncols=1, padding=1)
    assert grid.shape == (2 * 5 + 1, 4 + 2, 3)
    tall = hstack([np.zeros((4, 2, 3), np.uint8), np.zeros((6, 3, 3), np.uint8)], padding=1)
    assert tall.shape == (6, 6, 3)
    frame = annotate(np.zeros((32, 32, 3), np.uint8), ["r=+1", "END"], border=(255, 0, 0))
    assert frame.shape[0] > 32 and (frame[0, 0] == (255, 0, 0)).all()


def test_write_video_gif_and_mp4(tmp_path):
    frames = [np.full((20, 30, 3), 40 * i, dtype=np.uint8) for i in range(5)]
    gif = write_video(tmp_path / "clip.gif", frames, fps=10)
    assert PILImage.open(gif).n_frames == 5
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    mp4 = write_video(tmp_path / "clip.mp4", frames, fps=10)
    reader = imageio.get_reader(mp4)
    first = reader.get_data(0)
    assert first.shape == (32, 32, 3)  # padded to a multiple of 16 for the codec
    assert reader.count_frames() == 5
    with pytest.raises(ValueError, match="unsupported"):
        write_video(tmp_path / "clip.txt", frames)


def test_log_tensorboard_video_matches_sb3_summary(tmp_path):
    """Our TensorBoard video is what SB3's ``Video`` gives with a working moviepy: an image summary with a GIF."""
    logger = configure(str(tmp_path), ["tensorboard"])
    videos = np.random.default_rng(0).integers(0, 255, size=(2, 4, 8, 8, 3), dtype=np.uint8)
    assert log_tensorboard_video(logger, "test/video", videos, fps=5, step=7)
    logger.dump(step=7)
    logger.close()
    images = read_events(str(tmp_path)).Images("test/video")
    assert len(images) == 1 and images[0].step == 7
    assert images[0].encoded_image_string[:4] == b"GIF8"
    assert PILImage.open(io.BytesIO(images[0].encoded_image_string)).n_frames == 4
    assert isinstance(torch_tensorboard_video_supported(), bool)
    assert encode_gif([videos[0, 0]], fps=5)[:4] == b"GIF8"
    # Without a TensorBoard output nothing is logged.
    assert not log_tensorboard_video(configure(None, []), "test/video", videos, fps=5, step=0)
