"""Time the IRIS hot operations at a chosen configuration and print one JSON object.

Operations (the figures of the performance issue):
- ``tokenizer_update``: one tokenizer gradient step (L1 + commitment) on ``--tokenizer-batch`` frames;
- ``world_model_update_cold``: one world-model step on ``--wm-batch`` x ``--sequence-length`` steps, tokenizing
  its frames first; ``world_model_update_warm``: the same with tokens from the per-epoch token cache;
- ``actor_critic_update_cold``: burn-in + imagination + loss + step on ``--ac-batch`` rollouts (tokens of the
  real contexts from the token cache, burn-in reconstructions decoded); ``actor_critic_update_warm``: the same
  with the burn-in reconstructions from the per-epoch reconstruction cache;
- ``act``: choosing one action in the real env (encode-decode + actor), batch 1.

Usage::

    python benchmarks/components.py --preset paper --threads 2
    python benchmarks/components.py --preset paper --dtype bfloat16
    python benchmarks/components.py --preset tiny --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from typing import Callable

import torch

from sb3_iris.imagination import OneTokenStepper, imagine_rollouts, reconstruct_context
from sb3_iris.nn.actor_critic import ActorCritic, ActorCriticConfig, actor_critic_loss, compute_lambda_returns
from sb3_iris.nn.tokenizer import ConvTokenizer, ConvTokenizerConfig
from sb3_iris.nn.world_model import WorldModel, WorldModelConfig
from sb3_iris.performance import (
    PerformanceOptions,
    apply_process_options,
    autocast_context,
    configure_modules,
    optimizer_kwargs,
)

PRESETS = {
    "paper": dict(
        tokenizer=ConvTokenizerConfig(),
        world_model=dict(num_layers=10, num_heads=4, embed_dim=256, max_blocks=20),
        actor_critic=dict(lstm_dim=512),
        resolution=64,
    ),
    "tiny": dict(
        tokenizer=ConvTokenizerConfig(
            resolution=16,
            base_channels=8,
            channel_multipliers=(1, 1, 1),
            encoder_res_blocks=1,
            attention_resolutions=(),
            z_channels=16,
            embed_dim=16,
            vocab_size=32,
        ),
        world_model=dict(num_layers=1, num_heads=1, embed_dim=32, max_blocks=20),
        actor_critic=dict(conv_channels=(8, 8), lstm_dim=32),
        resolution=16,
    ),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_operation(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> dict:
    """Wall-clock median and spread of ``repeats`` calls after ``warmup`` untimed ones (seconds), and the
    median process CPU time (all threads; unlike wall time, it barely moves when other processes load the machine)
    and the minor page faults per call (memory the kernel had to map and zero: the cost the CPU allocator switch
    removes).
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    samples, cpu_samples = [], []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        synchronize(device)
        samples.append(time.perf_counter() - start)
        cpu_samples.append(time.process_time() - cpu_start)
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "median_cpu_s": statistics.median(cpu_samples),
        "minor_page_faults_per_call": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / repeats,
        "repeats": repeats,
    }


def build(preset: str, num_actions: int, device: torch.device):
    config = PRESETS[preset]
    tokenizer = ConvTokenizer(config["tokenizer"]).to(device)
    world_model = WorldModel(
        WorldModelConfig(
            obs_vocab_size=tokenizer.vocab_size,
            num_actions=num_actions,
            tokens_per_obs=tokenizer.tokens_per_obs,
            **config["world_model"],
        )
    ).to(device)
    resolution = config["resolution"]
    actor_critic = ActorCritic(
        ActorCriticConfig(
            num_actions=num_actions, observation_shape=(3, resolution, resolution), **config["actor_critic"]
        )
    ).to(device)
    return tokenizer, world_model, actor_critic, resolution


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="autocast dtype")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--tokenizer-batch", type=int, default=32)
    parser.add_argument("--wm-batch", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=20)
    parser.add_argument("--ac-batch", type=int, default=8)
    parser.add_argument("--burn-in", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--num-actions", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--merge-last-token", choices=["on", "off"], default="on")
    parser.add_argument(
        "--cpu-allocator",
        choices=["auto", "on", "off"],
        default="auto",
        help="keep freed CPU memory for reuse (glibc mallopt); auto: on for CPU devices",
    )
    parser.add_argument(
        "--compile-imagination",
        choices=["on", "off"],
        default="off",
        help="imagination through the compiled static-shape one-token world-model pass (CUDA graphs on CUDA)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="subset of operations to time")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    tokenizer, world_model, actor_critic, resolution = build(args.preset, args.num_actions, device)
    options = PerformanceOptions(
        mixed_precision=args.dtype == "bfloat16",
        channels_last={"auto": None, "on": True, "off": False}[args.channels_last],
        merge_last_token=args.merge_last_token == "on",
        tune_cpu_allocator={"auto": None, "on": True, "off": False}[args.cpu_allocator],
        compile_imagination=args.compile_imagination == "on",
    ).resolved(device)
    apply_process_options(options)
    configure_modules(options, tokenizer, actor_critic)
    autocast = autocast_context(options, device)
    k = tokenizer.tokens_per_obs
    fused = optimizer_kwargs(options)
    tokenizer_optimizer = torch.optim.Adam(tokenizer.parameters(), lr=1e-4, **fused)
    world_model_optimizer = torch.optim.AdamW(world_model.weight_decay_groups(0.01), lr=1e-4, **fused)
    actor_critic_optimizer = torch.optim.Adam(actor_critic.parameters(), lr=1e-4, **fused)

    def frames(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, 3, resolution, resolution), dtype=torch.uint8, device=device)

    tokenizer_frames = frames(args.tokenizer_batch)
    b, length = args.wm_batch, args.sequence_length
    wm_frames = frames(b * length)
    wm_tokens = torch.randint(0, tokenizer.vocab_size, (b, length, k), device=device)
    actions = torch.randint(0, args.num_actions, (b, length), device=device)
    rewards = torch.randn(b, length, device=device)
    ends = torch.zeros(b, length, dtype=torch.bool, device=device)
    mask = torch.ones(b, length, dtype=torch.bool, device=device)
    ac_tokens = torch.randint(0, tokenizer.vocab_size, (args.ac_batch, args.burn_in + 1, k), device=device)
    ac_mask = torch.ones(args.ac_batch, args.burn_in + 1, dtype=torch.bool, device=device)
    ac_cache = world_model.new_cache(args.ac_batch, device)
    stepper = OneTokenStepper(world_model, compile=True) if options.compile_imagination else None

    def tokenizer_update() -> None:
        tokenizer.train()
        with autocast:
            losses, _ = tokenizer.compute_loss(tokenizer.preprocess(tokenizer_frames))
        tokenizer_optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), 10.0)
        tokenizer_optimizer.step()

    def world_model_step(tokens: torch.Tensor) -> None:
        world_model.train()
        with autocast:
            losses = world_model.compute_loss(tokens, actions, rewards, ends, mask)
        world_model_optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(world_model.parameters(), 10.0)
        world_model_optimizer.step()

    def world_model_update_cold() -> None:
        tokenizer.eval()
        with torch.no_grad(), autocast:
            tokens = tokenizer.tokenize(tokenizer.preprocess(wm_frames)).view(b, length, k)
        world_model_step(tokens)

    def world_model_update_warm() -> None:
        world_model_step(wm_tokens)

    with torch.no_grad(), autocast:
        warm_reconstructions = reconstruct_context(tokenizer.eval(), ac_tokens, ac_mask)

    def actor_critic_update(reconstructions: torch.Tensor | None = None) -> None:
        tokenizer.eval()
        world_model.eval()
        actor_critic.train()
        with autocast:
            rollout = imagine_rollouts(
                tokenizer,
                world_model,
                actor_critic,
                ac_tokens,
                ac_mask,
                args.horizon,
                cache=ac_cache,
                merge_last_token=options.merge_last_token,
                context_reconstructions=reconstructions,
                stepper=stepper,
            )
            returns = compute_lambda_returns(
                rollout.rewards, rollout.values.detach().float(), rollout.ends, 0.995, 0.95
            )
            losses = actor_critic_loss(
                rollout.logits[:, :-1], rollout.actions[:, :-1], rollout.values[:, :-1], returns[:, :-1], 0.001
            )
        actor_critic_optimizer.zero_grad(set_to_none=True)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(actor_critic.parameters(), 10.0)
        actor_critic_optimizer.step()

    act_frame = frames(1)
    act_state = actor_critic.initial_state(1, device)

    @torch.no_grad()
    def act() -> None:
        tokenizer.eval()
        actor_critic.eval()
        with autocast:
            reconstruction = tokenizer.reconstruct(tokenizer.preprocess(act_frame))
            output = actor_critic(reconstruction, act_state)
        output.logits.argmax(-1).cpu()

    operations = {
        "tokenizer_update": tokenizer_update,
        "world_model_update_cold": world_model_update_cold,
        "world_model_update_warm": world_model_update_warm,
        "actor_critic_update_cold": actor_critic_update,
        "actor_critic_update_warm": lambda: actor_critic_update(warm_reconstructions),
        "act": act,
    }
    selected = args.only or list(operations)
    load_before = os.getloadavg()
    results = {}
    for name in selected:
        repeats = args.repeats * 10 if name == "act" else args.repeats
        results[name] = time_operation(operations[name], device, args.warmup, repeats)
    report = {
        "preset": args.preset,
        "config": {
            key: value
            for key, value in vars(args).items()
            if key not in ("only", "preset", "device", "dtype", "threads", "warmup", "repeats")
        },
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "dtype": args.dtype,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "options": options.as_dict(),
        "results": results,
        "peak_cpu_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    if device.type == "cuda":
        report["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1024**3
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
