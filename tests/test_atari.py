"""IRIS Atari preprocessing on real ALE games (fast: a few seconds in all)."""

import gymnasium as gym
import numpy as np
import pytest

ale_py = pytest.importorskip("ale_py")

from sb3_iris.atari import (  # noqa: E402
    EVAL_SETTINGS,
    TRAINING_SETTINGS,
    IrisAtariEvalWrapper,
    IrisAtariWrapper,
    make_iris_atari_env,
    max_pool_frames,
    resize_frame,
)

if hasattr(gym, "register_envs"):
    gym.register_envs(ale_py)


class RawFrameRecorder(gym.Wrapper):
    """Keeps a copy of every raw frame and reward that goes through it."""

    def __init__(self, env):
        super().__init__(env)
        self.frames = []
        self.rewards = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.frames.append(obs.copy())
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.frames.append(obs.copy())
        self.rewards.append(float(reward))
        return obs, reward, terminated, truncated, info


def make(env_id="BreakoutNoFrameskip-v4", record=False, **kwargs):
    env = gym.make(env_id)
    recorder = None
    if record:
        env = recorder = RawFrameRecorder(env)
    env = IrisAtariWrapper(env, **kwargs)
    return env, recorder


def run_until(env, condition, max_steps=3000, seed=0):
    """Random actions (fixed seed) until ``condition(reward, terminated, truncated, info)``."""
    env.action_space.seed(seed)
    for step in range(1, max_steps + 1):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if condition(reward, terminated, truncated, info):
            return step, obs, reward, terminated, truncated, info
        if terminated or truncated:
            env.reset()
    raise AssertionError(f"condition not met within {max_steps} steps")


def test_observation_space_and_dtype():
    env, _ = make()
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    obs, *_ = env.step(1)
    assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert obs.max() > 0  # an actual picture, not zeros


def test_frame_skip_4_and_max_pool():
    env, recorder = make(record=True, noop_max=0)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    for _ in range(20):
        frame_before, n_before = ale.getEpisodeFrameNumber(), len(recorder.frames)
        obs, *_ = env.step(env.action_space.sample())
        assert ale.getEpisodeFrameNumber() - frame_before == 4
        assert len(recorder.frames) - n_before == 4
        expected = resize_frame(np.maximum(recorder.frames[-2], recorder.frames[-1]), 64)
        np.testing.assert_array_equal(obs, expected)


def test_max_pool_frames_is_pixelwise_max():
    a = np.array([[[0, 10, 200]]], dtype=np.uint8)
    b = np.array([[[5, 3, 100]]], dtype=np.uint8)
    np.testing.assert_array_equal(max_pool_frames(a, b), [[[5, 10, 200]]])


def test_resize_numpy_fallback_matches_pillow():
    pytest.importorskip("PIL")
    frame = np.random.default_rng(0).integers(0, 256, (210, 160, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_frame(frame, 64, backend="pil"), resize_frame(frame, 64, backend="numpy"))
    with pytest.raises(ValueError, match="backend"):
        resize_frame(frame, 64, backend="cv2")


def test_life_loss_ends_episode_in_training_only_and_game_continues():
    env, _ = make(training=True)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    start_lives = ale.lives()
    _, _, _, terminated, truncated, info = run_until(env, lambda r, te, tr, i: i["life_loss"])
    assert terminated and not truncated
    lives_after_loss, frame_after_loss = ale.lives(), ale.getEpisodeFrameNumber()
    assert 0 < lives_after_loss < start_lives
    env.reset()  # continues the same game: no real reset
    assert ale.lives() == lives_after_loss
    assert ale.getEpisodeFrameNumber() == frame_after_loss + 4  # one no-op step

    env, _ = make(training=False)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    step, _, _, terminated, _, info = run_until(env, lambda r, te, tr, i: i["life_loss"])
    assert not terminated  # evaluation: a life loss is not an episode end
    assert ale.lives() < start_lives


def test_reset_after_game_over_is_a_real_reset():
    env, _ = make(training=True, noop_max=0)
    env.reset(seed=0)
    ale = env.unwrapped.ale
    run_until(env, lambda r, te, tr, i: te and not i["life_loss"], max_steps=5000)
    env.reset()
    assert ale.lives() == 5 and ale.getEpisodeFrameNumber() == 0


def test_rewards_are_not_clipped():
    env, recorder = make("SpaceInvadersNoFrameskip-v4", record=True)
    env.reset(seed=0)
    _, _, reward, *_ = run_until(env, lambda r, te, tr, i: r > 1)
    assert reward > 1  # Space Invaders aliens are worth 5..30 points
    assert reward == sum(recorder.rewards[-4:])  # summed over the skipped frames


def test_time_limit_truncation_counts_frames():
    env, _ = make(noop_max=0, max_episode_frames=40)
    env.reset(seed=0)
    for step in range(1, 11):
        _, _, terminated, truncated, _ = env.step(0)
        assert not terminated
        assert truncated == (step == 10)  # 40 frames = 10 agent steps at frame skip 4


def test_monitor_below_wrapper_reports_real_games():
    # RL Zoo / make_vec_env order: Monitor first, then the wrapper.
    monitor_module = pytest.importorskip("stable_baselines3.common.monitor")
    env = IrisAtariWrapper(monitor_module.Monitor(gym.make("BreakoutNoFrameskip-v4")), max_episode_frames=400)
    env.reset(seed=0)
    env.action_space.seed(0)
    n_life_losses, episodes = 0, []
    while not episodes:
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        n_life_losses += info["life_loss"]
        if terminated or truncated:
            if "episode" in info:
                episodes.append(info["episode"])
            else:
                assert info["life_loss"]
            env.reset()
    # The game ended at the 400-frame limit, the Monitor saw it (the limit sits below the Monitor).
    assert truncated and episodes[0]["l"] == 400
    assert n_life_losses >= 1  # ... after at least one life-loss episode end that it did not count


def test_make_iris_atari_env_and_eval_settings():
    env = make_iris_atari_env("BreakoutNoFrameskip-v4", training=False, seed=0)
    wrapper = env
    assert isinstance(wrapper, IrisAtariWrapper)
    assert wrapper.noop_max == EVAL_SETTINGS["noop_max"] == 1
    assert wrapper.terminal_on_life_loss is False
    assert wrapper.max_episode_frames == 108_000
    assert env.unwrapped.ale.getEpisodeFrameNumber() == 1  # exactly one no-op
    eval_wrapper = IrisAtariEvalWrapper(gym.make("PongNoFrameskip-v4"))
    assert not eval_wrapper.training and eval_wrapper.noop_max == 1
    train_wrapper = IrisAtariWrapper(gym.make("PongNoFrameskip-v4"))
    assert train_wrapper.noop_max == TRAINING_SETTINGS["noop_max"] == 30
    assert train_wrapper.max_episode_frames == 20_000 and train_wrapper.terminal_on_life_loss


@pytest.mark.parametrize("env_id, frameskip", [("ALE/Pong-v5", "4"), ("Pong-v4", r"\(2, 5\)")])
def test_wrong_frameskip_raises(env_id, frameskip):
    with pytest.raises(ValueError, match=rf"{env_id}.*frameskip={frameskip}"):
        IrisAtariWrapper(gym.make(env_id))
