import pickle

import numpy as np
import pytest
from gymnasium import spaces

from sb3_iris.buffers import EpisodeReplayBuffer, SegmentBatch
from sb3_iris.caches import TokenTable

IMAGE_SPACE = spaces.Box(0, 255, (3, 16, 16), np.uint8)
VECTOR_SPACE = spaces.Box(-np.inf, np.inf, (4,), np.float32)


def vector_obs(t: int, n_envs: int) -> np.ndarray:
    """Observation of env e at absolute time t: [t + 1, e, 0, 0] (t + 1 so that padding zeros stand out)."""
    obs = np.zeros((n_envs, 4), np.float32)
    obs[:, 0] = t + 1
    obs[:, 1] = np.arange(n_envs)
    return obs


def fill(buffer: EpisodeReplayBuffer, n_steps: int, done_prob: float = 0.1, seed: int = 0) -> np.ndarray:
    """
    Add ``n_steps`` steps with known contents (vector observations encode time and env, actions and
    rewards are functions of them) and random episode ends.

    :return: episode id of every (env, time), ``(n_envs, n_steps)``, unique across envs
    """
    rng = np.random.default_rng(seed)
    n_envs = buffer.n_envs
    episode_ids = np.zeros((n_envs, n_steps), np.int64)
    current = np.arange(n_envs)
    next_id = n_envs
    t0 = buffer.time_range[1]
    for step in range(n_steps):
        t = t0 + step
        ends = rng.random(n_envs) < done_prob
        terminated = ends & (rng.random(n_envs) < 0.5)
        truncated = ends & ~terminated
        if buffer.obs_shape == (4,):
            obs = vector_obs(t, n_envs)
        else:
            obs = np.full((n_envs, *buffer.obs_shape), (t + 1) % 256, np.uint8)
        buffer.add(obs, (t + np.arange(n_envs)) % 5, t + 0.5 * np.arange(n_envs), terminated, truncated)
        episode_ids[:, step] = current
        for env in np.flatnonzero(ends):
            current[env] = next_id
            next_id += 1
    return episode_ids


@pytest.mark.parametrize("space", [IMAGE_SPACE, VECTOR_SPACE], ids=["image", "vector"])
@pytest.mark.parametrize("n_envs", [1, 3])
def test_sample_shapes_and_dtypes(space, n_envs):
    buffer = EpisodeReplayBuffer(space, n_envs=n_envs, seed=0)
    fill(buffer, 40)
    assert buffer.n_steps == 40 * n_envs
    assert buffer.size() == 40
    stored_dtype = np.uint8 if space is IMAGE_SPACE else np.float32

    frames, env_indices, time_indices = buffer.sample_frames(300)
    assert frames.shape == (300, *space.shape) and frames.dtype == stored_dtype
    assert env_indices.shape == time_indices.shape == (300,)
    assert set(np.unique(env_indices)) == set(range(n_envs))
    np.testing.assert_array_equal(frames, buffer.observations_at(env_indices, time_indices))

    batch = buffer.sample_segments(7, 5)
    assert isinstance(batch, SegmentBatch)
    assert batch.observations.shape == (7, 5, *space.shape) and batch.observations.dtype == stored_dtype
    expected = {
        "actions": np.int64,
        "rewards": np.float32,
        "terminations": np.bool_,
        "truncations": np.bool_,
        "mask_padding": np.bool_,
        "env_indices": np.int64,
        "time_indices": np.int64,
    }
    for name, dtype in expected.items():
        values = getattr(batch, name)
        assert values.shape == (7, 5), name
        assert values.dtype == dtype, name


def check_segments(batch: SegmentBatch, episode_ids: np.ndarray, padding: str) -> None:
    """Every segment is one contiguous run of real steps of one episode, with zero padding around it."""
    mask = batch.mask_padding
    assert mask.any(axis=1).all()
    for b in range(len(mask)):
        real = np.flatnonzero(mask[b])
        assert np.array_equal(real, np.arange(real[0], real[-1] + 1)), "real steps are not contiguous"
        env = batch.env_indices[b, real[0]]
        times = batch.time_indices[b, real]
        np.testing.assert_array_equal(times, np.arange(times[0], times[0] + len(times)))
        assert len(np.unique(episode_ids[env, times])) == 1, "segment crosses an episode boundary"
        np.testing.assert_array_equal(batch.observations[b, real, 0], times + 1)
        np.testing.assert_array_equal(batch.observations[b, real, 1], env)
        np.testing.assert_array_equal(batch.actions[b, real], (times + env) % 5)
        np.testing.assert_allclose(batch.rewards[b, real], times + 0.5 * env)
        # Padding exists only where the segment runs past an episode edge.
        if real[0] > 0:
            assert times[0] == 0 or episode_ids[env, times[0] - 1] != episode_ids[env, times[0]]
        if real[-1] < mask.shape[1] - 1:
            assert (batch.terminations[b, real[-1]] or batch.truncations[b, real[-1]]) or times[-1] == (
                episode_ids.shape[1] - 1
            )
        if padding == "left":
            assert mask[b, -1]
        if padding == "right":
            assert mask[b, 0]
        if padding == "both":
            assert mask[b, 0] or mask[b, -1]
    padded = ~mask
    assert not batch.observations[padded].any()
    assert not batch.actions[padded].any()
    assert not batch.rewards[padded].any()
    assert not batch.terminations[padded].any()
    assert not batch.truncations[padded].any()
    assert (batch.time_indices[padded] == -1).all()


@pytest.mark.parametrize("padding", ["both", "left", "right"])
@pytest.mark.parametrize("n_envs", [1, 3])
def test_segments_never_cross_episode_boundaries(padding, n_envs):
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=n_envs, initial_capacity=16, seed=1)
    episode_ids = fill(buffer, 200, done_prob=0.15)
    assert buffer.n_episodes == len(np.unique(episode_ids))
    batch = buffer.sample_segments(256, 10, padding=padding)
    assert (~batch.mask_padding).any(), "episodes of ~7 steps must produce padding with L=10"
    check_segments(batch, episode_ids, padding)


def test_both_padding_uses_both_sides():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, seed=2)
    fill(buffer, 100, done_prob=0.2)
    mask = buffer.sample_segments(400, 8).mask_padding
    left_padded = ~mask[:, 0]
    right_padded = ~mask[:, -1]
    assert 50 < left_padded.sum() < 350 and 50 < right_padded.sum() < 350


def test_episode_ends_at_termination_and_truncation():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, seed=0)
    flags = [(False, False), (True, False), (False, False), (False, True), (False, False)]
    for t, (terminated, truncated) in enumerate(flags):
        buffer.add(vector_obs(t, 1), [0], [0.0], [terminated], [truncated])
    # Episodes: times [0, 1], [2, 3], [4] (ongoing).
    assert buffer.n_episodes == 3
    batch = buffer.sample_segments(200, 3, padding="left")
    episodes = {tuple(row[m]) for row, m in zip(batch.time_indices, batch.mask_padding)}
    assert episodes == {(0,), (0, 1), (2,), (2, 3), (4,)}
    _, _, times = buffer.sample_frames(200)
    assert set(times) == {0, 1, 2, 3, 4}


def test_sample_frames_samples_episodes_uniformly():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, seed=3)
    for t in range(10):  # ten episodes of one step
        buffer.add(vector_obs(t, 1), [0], [0.0], [True], [False])
    for t in range(10, 100):  # one ongoing episode of 90 steps
        buffer.add(vector_obs(t, 1), [0], [0.0], [False], [False])
    _, _, times = buffer.sample_frames(11_000)
    fraction_long = np.mean(times >= 10)
    assert abs(fraction_long - 1 / 11) < 0.02


def test_ongoing_episode_is_sampleable():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, seed=0)
    for t in range(5):
        buffer.add(vector_obs(t, 1), [1], [1.0], [False], [False])
    assert buffer.n_episodes == 1
    batch = buffer.sample_segments(50, 3, padding="right")
    assert set(batch.time_indices[batch.mask_padding]) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(
        batch.observations[..., 0][batch.mask_padding], batch.time_indices[batch.mask_padding] + 1
    )


def test_episode_tail():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=2, seed=0)
    for t in range(6):
        buffer.add(vector_obs(t, 2), [0, 0], [0, 0], [False, t == 3], [False, False])
    np.testing.assert_array_equal(buffer.episode_tail(0, 4)[:, 0], [3, 4, 5, 6])
    np.testing.assert_array_equal(buffer.episode_tail(0, 100)[:, 0], [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(buffer.episode_tail(1, 100)[:, 0], [5, 6])
    np.testing.assert_array_equal(buffer.episode_tail(1, 100)[:, 1], [1, 1])
    assert buffer.episode_tail(0, 0).shape == (0, 4)
    buffer.add(vector_obs(6, 2), [0, 0], [0, 0], [True, False], [False, False])
    assert buffer.episode_tail(0, 4).shape == (0, 4)
    np.testing.assert_array_equal(buffer.episode_tail(1, 4)[:, 0], [5, 6, 7])
    with pytest.raises(ValueError, match="env_index"):
        buffer.episode_tail(2, 4)


def test_growth_keeps_data():
    buffer = EpisodeReplayBuffer(IMAGE_SPACE, n_envs=2, initial_capacity=4, seed=0)
    fill(buffer, 50)
    assert buffer._capacity >= 50
    envs, times = np.meshgrid(np.arange(2), np.arange(50), indexing="ij")
    frames = buffer.observations_at(envs, times)
    assert frames.shape == (2, 50, *IMAGE_SPACE.shape)
    np.testing.assert_array_equal(frames[:, :, 0, 0, 0], times + 1)
    assert buffer.nbytes == 50 * 2 * (3 * 16 * 16 + 8 + 4 + 1 + 1)


def add_episodes(buffer: EpisodeReplayBuffer, lengths, t0: int = 0) -> int:
    """Add episodes of the given lengths (one env); returns the next absolute time."""
    t = t0
    for length in lengths:
        for i in range(length):
            buffer.add(vector_obs(t, 1), [0], [0.0], [i == length - 1], [False])
            t += 1
    return t


@pytest.mark.parametrize("limit", ["buffer_size", "memory_budget_bytes"])
def test_eviction_drops_oldest_episodes(limit):
    bytes_per_step = 4 * 4 + 8 + 4 + 1 + 1
    kwargs = {"buffer_size": 12} if limit == "buffer_size" else {"memory_budget_bytes": 12 * bytes_per_step}
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, initial_capacity=4, seed=0, **kwargs)
    end = add_episodes(buffer, [5, 5, 5, 5, 5])
    assert end == 25
    # After the 5th episode's last step: 25 steps > 12, cut at the end of episodes until <= 12 steps.
    assert buffer.time_range == (15, 25)
    assert buffer.n_steps == 10 and buffer.n_episodes == 2
    assert buffer.nbytes == 10 * bytes_per_step
    assert buffer._capacity <= 13
    np.testing.assert_array_equal(buffer.observations_at(np.zeros(10, int), np.arange(15, 25))[:, 0], np.arange(16, 26))
    with pytest.raises(IndexError, match="not stored"):
        buffer.observations_at([0], [14])
    _, _, times = buffer.sample_frames(500)
    assert set(times) == set(range(15, 25))
    # Three more steps: 13 > 12 drops the episode [15, 20).
    end = add_episodes(buffer, [3], t0=end)
    assert buffer.time_range == (20, 28)
    batch = buffer.sample_segments(200, 6)
    check_segments_times = batch.time_indices[batch.mask_padding]
    assert check_segments_times.min() >= 20
    np.testing.assert_array_equal(batch.observations[..., 0][batch.mask_padding], check_segments_times + 1)


def test_eviction_truncates_a_single_long_episode():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, buffer_size=10, initial_capacity=4, seed=0)
    for t in range(25):
        buffer.add(vector_obs(t, 1), [0], [0.0], [False], [False])
    assert buffer.time_range == (15, 25) and buffer.n_episodes == 1
    np.testing.assert_array_equal(buffer.episode_tail(0, 100)[:, 0], np.arange(16, 26))
    # Ending the episode does not empty the buffer.
    buffer.add(vector_obs(25, 1), [0], [0.0], [True], [False])
    assert buffer.time_range == (16, 26) and buffer.n_episodes == 1
    assert buffer.episode_tail(0, 100).shape == (0, 4)
    assert set(buffer.sample_frames(100)[2]) == set(range(16, 26))


def test_eviction_with_several_envs_keeps_straddling_episodes():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=2, buffer_size=16, initial_capacity=4, seed=0)
    # env 0: episodes [0, 3) and [3, ...); env 1: one ongoing episode.
    for t in range(9):
        buffer.add(vector_obs(t, 2), [0, 0], [0, 0], [t == 2, False], [False, False])
    # 18 steps > 16: cut at the end of env 0's first episode (t=3); env 1's episode keeps [3, 9).
    assert buffer.time_range == (3, 9)
    assert buffer.n_steps == 12 and buffer.n_episodes == 2
    np.testing.assert_array_equal(buffer.episode_tail(1, 100)[:, 0], np.arange(4, 10))
    batch = buffer.sample_segments(100, 8, padding="left")
    assert (batch.time_indices[batch.mask_padding] >= 3).all()
    assert (batch.mask_padding.sum(axis=1) <= 6).all()


def test_token_cache():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=2, initial_capacity=4, seed=0)
    fill(buffer, 4, done_prob=0.0)
    table = TokenTable(buffer, 3)
    tokens, valid = table.lookup(np.array([[0, 1]]), np.array([[2, 2]]))
    assert tokens.shape == (1, 2, 3) and tokens.dtype == np.int64 and not valid.any()

    batch = buffer.sample_segments(16, 3)
    batch_tokens = np.stack([batch.env_indices, batch.time_indices, batch.time_indices * 10], axis=-1)
    table.store(batch.env_indices, batch.time_indices, batch_tokens)  # padded entries are skipped
    tokens, valid = table.lookup(batch.env_indices, batch.time_indices)
    np.testing.assert_array_equal(valid, batch.mask_padding)
    np.testing.assert_array_equal(tokens[valid], batch_tokens[valid])
    assert not tokens[~valid].any()

    envs, times = np.meshgrid(np.arange(2), np.arange(4), indexing="ij")
    table.store(envs, times, np.stack([envs, times, times + 7], axis=-1))
    fill(buffer, 60, done_prob=0.0)  # grows the storage (the table grows at its next store)
    tokens, valid = table.lookup(envs, times)
    assert valid.all()
    np.testing.assert_array_equal(tokens, np.stack([envs, times, times + 7], axis=-1))
    _, valid = table.lookup(np.array([0, 1]), np.array([10, 63]))
    assert not valid.any(), "new steps must not inherit tokens"

    table.invalidate()
    tokens, valid = table.lookup(envs, times)
    assert not valid.any() and not tokens.any()
    table.store([1], [3], [[4, 5, 6]])
    tokens, valid = table.lookup(envs, times)
    assert valid.sum() == 1 and valid[1, 3]
    np.testing.assert_array_equal(tokens[1, 3], [4, 5, 6])

    with pytest.raises(ValueError, match="tokens must have shape"):
        table.store([0], [0], [[1, 2]])
    with pytest.raises(IndexError, match="not stored"):
        table.store([0], [64], [[1, 2, 3]])


def test_token_cache_slots_are_reset_when_reused():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, buffer_size=6, initial_capacity=4, seed=0)
    table = TokenTable(buffer, 2)
    for t in range(6):
        buffer.add(vector_obs(t, 1), [0], [0.0], [False], [False])
        table.store([0], [t], [[t, t]])
    for t in range(6, 20):  # the ring wraps: old slots are reused by new steps
        buffer.add(vector_obs(t, 1), [0], [0.0], [False], [False])
    first, end = buffer.time_range
    _, valid = table.lookup(np.zeros(end - first, int), np.arange(first, end))
    assert not valid.any()
    _, valid = table.lookup([0], [2])  # evicted
    assert not valid.any()


@pytest.mark.parametrize("evict", [False, True])
def test_pickle_round_trip(evict):
    buffer = EpisodeReplayBuffer(IMAGE_SPACE, n_envs=2, buffer_size=120 if evict else None, initial_capacity=16, seed=5)
    fill(buffer, 100)
    TokenTable(buffer, 4).store([0], [buffer.time_range[0]], [[1, 2, 3, 4]])
    data = pickle.dumps(buffer)
    assert len(data) < buffer.nbytes + 10_000, "pickle must hold only the live steps"
    restored = pickle.loads(data)
    assert restored.time_range == buffer.time_range
    assert restored.n_episodes == buffer.n_episodes and restored.nbytes <= buffer.nbytes
    _, valid = TokenTable(restored, 4).lookup([0], [buffer.time_range[0]])
    assert not valid.any()

    for original, copy in [(buffer, restored)] * 2:
        a, b = original.sample_segments(32, 6), copy.sample_segments(32, 6)
        for name in SegmentBatch.__dataclass_fields__:
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        np.testing.assert_array_equal(original.sample_frames(16)[0], copy.sample_frames(16)[0])
    # Both keep working identically after more steps (growth from a compact state).
    fill(buffer, 30, seed=9)
    fill(restored, 30, seed=9)
    np.testing.assert_array_equal(buffer.episode_tail(1, 50), restored.episode_tail(1, 50))
    np.testing.assert_array_equal(
        buffer.sample_segments(8, 4).observations, restored.sample_segments(8, 4).observations
    )


def test_errors():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=2)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample_segments(4, 3)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample_frames(4)
    with pytest.raises(ValueError, match=r"observations must have shape .*\(2, 4\).*\(1, 4\)"):
        buffer.add(np.zeros((1, 4)), [0, 0], [0, 0], [False, False], [False, False])
    with pytest.raises(ValueError, match="actions"):
        buffer.add(np.zeros((2, 4)), [0, 0, 0], [0, 0], [False, False], [False, False])
    fill(buffer, 5)
    with pytest.raises(ValueError, match="batch_size=0"):
        buffer.sample_segments(0, 3)
    with pytest.raises(ValueError, match="batch_size=-2"):
        buffer.sample_frames(-2)
    with pytest.raises(ValueError, match="sequence_length=0"):
        buffer.sample_segments(4, 0)
    with pytest.raises(ValueError, match="padding='middle'"):
        buffer.sample_segments(4, 3, padding="middle")


@pytest.mark.parametrize(
    "space, error",
    [
        (spaces.Dict({"image": IMAGE_SPACE}), TypeError),
        (spaces.Discrete(4), TypeError),
        (spaces.Box(0.0, 1.0, (3, 16, 16), np.float32), ValueError),
        (spaces.Box(0, 10, (4,), np.int64), ValueError),
    ],
)
def test_unsupported_observation_spaces(space, error):
    with pytest.raises(error, match="observation_space"):
        EpisodeReplayBuffer(space)


def test_bad_limits():
    with pytest.raises(ValueError, match="buffer_size=2"):
        EpisodeReplayBuffer(VECTOR_SPACE, n_envs=3, buffer_size=2)
    with pytest.raises(ValueError, match="memory_budget_bytes=10"):
        EpisodeReplayBuffer(VECTOR_SPACE, memory_budget_bytes=10)
    with pytest.raises(ValueError, match="n_envs=0"):
        EpisodeReplayBuffer(VECTOR_SPACE, n_envs=0)


def test_close_ongoing_episodes_starts_new_episodes():
    space = spaces.Box(-np.inf, np.inf, (1,), np.float32)
    buffer = EpisodeReplayBuffer(space, n_envs=2, seed=0)
    for step in range(3):
        buffer.add(np.full((2, 1), step, np.float32), [0, 0], [0, 0], [False, False], [False, False])
    assert buffer.n_episodes == 2
    buffer.close_ongoing_episodes()
    assert len(buffer.episode_tail(0, 5)) == 0
    for step in range(3, 5):
        buffer.add(np.full((2, 1), step, np.float32), [0, 0], [0, 0], [False, False], [False, False])
    assert buffer.n_episodes == 4
    tail = buffer.episode_tail(1, 10)
    np.testing.assert_array_equal(tail[:, 0], [3, 4])
    batch = buffer.sample_segments(64, 5, padding="both")
    # No segment mixes steps from before and after the close.
    for row, mask in zip(batch.observations[..., 0], batch.mask_padding):
        values = row[mask]
        assert (values < 3).all() or (values >= 3).all()


def test_token_table_bytes_count_in_the_replay_memory_budget():
    """The table's bytes per step count in the replay's nbytes (and so its budget) once allocated, not in a pickle."""
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=2, initial_capacity=4, seed=0)
    fill(buffer, 10, done_prob=0.0)
    plain = buffer.nbytes
    table = TokenTable(buffer, 3)
    assert buffer.nbytes == plain  # nothing allocated before the first store
    table.store([0], [buffer.time_range[0]], [[1, 2, 3]])
    assert buffer.nbytes == plain + buffer.size() * buffer.n_envs * (3 * 8 + 8)
    assert pickle.loads(pickle.dumps(buffer)).nbytes == plain


@pytest.mark.parametrize("padding", ["left", "right"])
@pytest.mark.parametrize("n_envs", [1, 3])
def test_recent_segments_come_from_the_recent_window(padding, n_envs):
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=n_envs, initial_capacity=16, seed=3)
    episode_ids = fill(buffer, 300, done_prob=0.1)
    batch = buffer.sample_segments(2000, 6, padding=padding, recent_fraction=0.5, recent_time_steps=20)
    check_segments(batch, episode_ids, padding)
    # The sampled time t is the first real step ("right") or the last ("left") of each segment.
    anchor = 0 if padding == "right" else -1
    anchors = np.array([batch.time_indices[b, batch.mask_padding[b]][anchor] for b in range(len(batch.time_indices))])
    recent = anchors[-1000:]
    assert recent.min() >= 280 and recent.max() < 300
    # Each recent step is equally likely, whatever the length of its episode; each env is drawn.
    counts = np.bincount(recent - 280, minlength=20)
    assert counts.min() > 20 and counts.max() < 90  # 50 expected per step
    assert set(batch.env_indices[-1000:, anchor]) == set(range(n_envs))
    # The episode-uniform part covers the whole replay.
    assert anchors[:1000].min() < 100


def test_recent_sampling_after_eviction_and_with_an_ongoing_episode():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, initial_capacity=4, buffer_size=12, seed=0)
    end = add_episodes(buffer, [5, 5, 5, 5, 5])
    for _ in range(3):  # an ongoing episode [25, 28)
        buffer.add(vector_obs(end, 1), [0], [0.0], [False], [False])
        end += 1
    # A window wider than the replay holds only stored steps.
    batch = buffer.sample_segments(200, 1, padding="left", recent_fraction=1.0, recent_time_steps=100)
    assert set(batch.time_indices[:, 0]) == set(range(*buffer.time_range))
    batch = buffer.sample_segments(200, 4, padding="right", recent_fraction=1.0, recent_time_steps=3)
    np.testing.assert_array_equal(batch.time_indices[:, 0] >= 25, True)
    np.testing.assert_array_equal(
        batch.observations[..., 0][batch.mask_padding], batch.time_indices[batch.mask_padding] + 1
    )


def test_recent_sampling_errors():
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, seed=0)
    with pytest.raises(ValueError, match="empty"):
        buffer.sample_segments(4, 2, recent_fraction=1.0, recent_time_steps=5)
    fill(buffer, 20)
    with pytest.raises(ValueError, match="recent_fraction must be in"):
        buffer.sample_segments(4, 2, recent_fraction=1.5, recent_time_steps=5)
    with pytest.raises(ValueError, match="needs recent_time_steps"):
        buffer.sample_segments(4, 2, recent_fraction=0.5)
    with pytest.raises(ValueError, match="recent_time_steps"):
        buffer.sample_segments(4, 2, recent_fraction=0.5, recent_time_steps=0)
    # recent_fraction 0 draws exactly as before.
    a = EpisodeReplayBuffer(VECTOR_SPACE, seed=5)
    b = EpisodeReplayBuffer(VECTOR_SPACE, seed=5)
    fill(a, 50)
    fill(b, 50)
    np.testing.assert_array_equal(
        a.sample_segments(32, 4, "right").time_indices,
        b.sample_segments(32, 4, "right", recent_fraction=0.0, recent_time_steps=7).time_indices,
    )


def sparse_event_buffer(n_envs: int, seed: int = 0) -> EpisodeReplayBuffer:
    """A buffer of 30-step episodes whose only events are a reward of 1 at step 12 and the termination at step 29
    (env e's episodes shifted by e steps, so that the envs' events fall at different times)."""
    buffer = EpisodeReplayBuffer(VECTOR_SPACE, n_envs=n_envs, initial_capacity=8, seed=seed)
    for t in range(200):
        step = (t + np.arange(n_envs)) % 30
        buffer.add(
            vector_obs(t, n_envs), np.zeros(n_envs, int), (step == 12).astype(float), step == 29, [False] * n_envs
        )
    return buffer


def test_event_steps_are_the_rewarded_and_terminal_steps():
    buffer = sparse_event_buffer(n_envs=2)
    envs, times = buffer.event_steps()
    steps = (times + envs) % 30
    assert set(steps) == {12, 29}
    assert len(times) == sum(int(np.sum((np.arange(200) + e) % 30 == s)) for e in (0, 1) for s in (12, 29))


@pytest.mark.parametrize("padding", ["left", "right", "both"])
def test_event_segments_hold_an_event_at_every_position(padding):
    buffer = sparse_event_buffer(n_envs=2, seed=1)
    length = 6
    batch = buffer.sample_segments(3000, length, padding=padding, event_fraction=1.0)
    mask = batch.mask_padding
    events = (batch.rewards != 0) | batch.terminations
    assert np.all((events & mask).any(axis=1)), "an event segment holds no event"
    # Each segment is one run of its episode: steps are consecutive and stop at the termination.
    for b in range(0, len(mask), 97):
        real = batch.time_indices[b, mask[b]]
        np.testing.assert_array_equal(real, np.arange(real[0], real[0] + len(real)))
        np.testing.assert_array_equal(batch.observations[b, mask[b], 0], real + 1)
    # The reward of step 12 (never at an episode edge) is seen at every position of the segment.
    rewarded = events & (batch.rewards != 0)
    positions = np.argmax(rewarded[rewarded.any(axis=1)], axis=1)
    counts = np.bincount(positions, minlength=length)
    assert counts.min() > 0.5 * counts.mean()
    # Without events the plain draw holds one in about 2 of 30 x 6 steps: far fewer.
    plain = buffer.sample_segments(3000, length, padding=padding)
    assert (((plain.rewards != 0) | plain.terminations) & plain.mask_padding).any(axis=1).mean() < 0.6


def test_event_fraction_mixes_with_the_other_draws_and_is_validated():
    buffer = sparse_event_buffer(n_envs=1)
    batch = buffer.sample_segments(
        40, 3, padding="right", recent_fraction=0.25, recent_time_steps=10, event_fraction=0.5
    )
    events = ((batch.rewards != 0) | batch.terminations) & batch.mask_padding
    assert events[-20:].any(axis=1).all()  # the event segments come last
    assert batch.time_indices[10:20, 0].min() >= 190  # then the recent ones before them
    with pytest.raises(ValueError, match="event_fraction must be in"):
        buffer.sample_segments(4, 2, event_fraction=-0.5)
    with pytest.raises(ValueError, match="recent_fraction \\+ event_fraction"):
        buffer.sample_segments(4, 2, recent_fraction=0.6, recent_time_steps=5, event_fraction=0.6)
    # event_fraction 0 draws exactly as before; with no event stored the event draw is the episode-uniform one.
    a, b = sparse_event_buffer(1, seed=4), sparse_event_buffer(1, seed=4)
    np.testing.assert_array_equal(
        a.sample_segments(32, 4, "right").time_indices,
        b.sample_segments(32, 4, "right", event_fraction=0.0).time_indices,
    )
    quiet = EpisodeReplayBuffer(VECTOR_SPACE, seed=0)
    add_episodes(quiet, [40])  # one episode, its only event the termination at its last step
    quiet.add(vector_obs(40, 1), [0], [0.0], [False], [False])  # an ongoing one without events
    assert len(quiet.event_steps()[0]) == 1
    silent = EpisodeReplayBuffer(VECTOR_SPACE, seed=0)
    for t in range(10):
        silent.add(vector_obs(t, 1), [0], [0.0], [False], [False])
    assert silent.sample_segments(8, 3, "right", event_fraction=1.0).mask_padding[:, 0].all()


def test_event_lead_puts_the_event_up_to_lead_steps_after_a_context():
    buffer = sparse_event_buffer(n_envs=1, seed=2)
    lead = 5
    batch = buffer.sample_segments(3000, 1, padding="left", event_fraction=1.0, event_lead=lead)
    steps = batch.time_indices[:, 0] % 30  # the step of each context inside its 30-step episode
    # Every context is the event step (12 or 29) or one of the `lead` steps before it.
    before = np.minimum(np.where(steps <= 12, 12 - steps, 99), np.where(steps <= 29, 29 - steps, 99))
    assert before.max() <= lead
    counts = np.bincount(before, minlength=lead + 1)
    assert counts.min() > 0.5 * counts.mean()  # each distance about equally often
    with pytest.raises(ValueError, match="event_lead must be"):
        buffer.sample_segments(4, 1, "left", event_fraction=1.0, event_lead=-1)
