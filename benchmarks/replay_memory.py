"""Memory and speed of EpisodeReplayBuffer with Atari-sized frames.

Fills a buffer with ``--frames`` random uint8 frames (episodes of random length around 1000 steps),
then prints one JSON object: the buffer's ``nbytes``, the process RSS before and after (current and
peak), the time to fill and the time of 100 ``sample_segments(64, 21)`` calls (the IRIS world-model
batch). 100k frames of 3x64x64 should take about 1.2 GB.

    python benchmarks/replay_memory.py --frames 100000 --shape 3 64 64
"""

import argparse
import json
import resource
import time
from typing import Dict

import numpy as np
from gymnasium import spaces

from sb3_iris.buffers import EpisodeReplayBuffer

GB = 1e9


def memory_usage() -> Dict[str, int]:
    """
    :return: current (``VmRSS``) and peak (``VmHWM``) resident set size of this process in bytes
    """
    usage = {}
    try:
        with open("/proc/self/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    usage[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    if "VmHWM" not in usage:  # not Linux: ru_maxrss is in KiB on Linux, bytes on macOS
        usage["VmHWM"] = usage["VmRSS"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000, help="number of frames to store")
    parser.add_argument("--shape", type=int, nargs="+", default=[3, 64, 64], help="frame shape (uint8)")
    parser.add_argument("--episode-length", type=int, default=1000, help="mean episode length")
    parser.add_argument("--n-envs", type=int, default=1, help="parallel envs (frames are split between them)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    shape = tuple(args.shape)
    n_envs = args.n_envs
    # A pool of random frames, so that the timing measures the buffer and not the random generator.
    pool = rng.integers(0, 256, size=(256, n_envs, *shape), dtype=np.uint8)
    n_adds = args.frames // n_envs
    lengths = rng.integers(args.episode_length // 2, 3 * args.episode_length // 2 + 1, size=(n_envs, n_adds // 10 + 2))
    episode_ends = np.zeros((n_envs, n_adds), dtype=bool)
    for env in range(n_envs):
        ends = np.cumsum(lengths[env]) - 1
        episode_ends[env, ends[ends < n_adds]] = True
    actions = rng.integers(0, 6, size=(n_adds, n_envs))
    rewards = rng.standard_normal((n_adds, n_envs)).astype(np.float32)
    no_truncation = np.zeros(n_envs, dtype=bool)

    before = memory_usage()
    buffer = EpisodeReplayBuffer(spaces.Box(0, 255, shape, np.uint8), n_envs=n_envs, seed=args.seed)
    start = time.perf_counter()
    for step in range(n_adds):
        buffer.add(pool[step % len(pool)], actions[step], rewards[step], episode_ends[:, step], no_truncation)
    fill_seconds = time.perf_counter() - start
    after = memory_usage()

    buffer.sample_segments(64, 21)
    start = time.perf_counter()
    for _ in range(100):
        buffer.sample_segments(64, 21)
    sample_seconds = time.perf_counter() - start

    print(
        json.dumps(
            {
                "frames": buffer.n_steps,
                "shape": list(shape),
                "n_envs": n_envs,
                "episodes": buffer.n_episodes,
                "bytes": buffer.nbytes,
                "GB": round(buffer.nbytes / GB, 4),
                "rss_before_GB": round(before["VmRSS"] / GB, 4),
                "rss_after_GB": round(after["VmRSS"] / GB, 4),
                "rss_delta_GB": round((after["VmRSS"] - before["VmRSS"]) / GB, 4),
                "peak_rss_GB": round(after["VmHWM"] / GB, 4),
                "fill_seconds": round(fill_seconds, 3),
                "fill_us_per_add": round(1e6 * fill_seconds / max(n_adds, 1), 2),
                "sample_segments_64x21_x100_seconds": round(sample_seconds, 4),
                "sample_segments_ms_per_call": round(10 * sample_seconds, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
