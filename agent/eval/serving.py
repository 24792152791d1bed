"""Serving benchmarks on vLLM: the tiny model with no adapter, one adapter, and four in rotation (start time,
memory); and the cost of switching between projects' adapters, cold and warm."""

from __future__ import annotations

import socket
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import psutil

from agent.config import Config, ModelsConfig, RoleModels, ServeConfig
from agent.eval.bench import PeakMemory
from agent.llm.registry import promote, register
from agent.llm.serve import plan_serve, start
from agent.llm.tiny import build_tiny_model, random_adapter
from agent.scratch import scratch_folder
from agent.stages import STAGE_ROLES, stages_of

PROMPT = [{"role": "user", "content": "Rename sub_80A1234 to CB2_InitWallClock in src/wallclock.c"}]
Progress = Callable[[str], None]


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total


def _mode(client: openai.OpenAI, models: list[str], *, requests: int, concurrency: int, tokens: int) -> dict:
    """Sequential latency, then throughput at `concurrency`, asking `models` in rotation."""
    def one(i: int) -> tuple[float, int]:
        began = time.perf_counter()
        response = client.chat.completions.create(
            model=models[i % len(models)], messages=PROMPT, max_tokens=tokens, temperature=0,
            extra_body={"ignore_eos": True, "min_tokens": tokens},
        )
        return time.perf_counter() - began, response.usage.completion_tokens if response.usage else 0

    for i in range(len(models)):  # warm each adapter once
        one(i)
    latencies = sorted(one(i)[0] for i in range(requests))
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        produced = sum(n for _, n in pool.map(one, range(requests * 2)))
    wall = time.perf_counter() - began
    return {
        "models": models, "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "latency_p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))] * 1000, 1),
        "throughput_tok_s": round(produced / wall, 1), "requests_per_s": round(requests * 2 / wall, 2),
    }


def bench_serving(
    python: str, *, requests: int = 32, concurrency: int = 8, tokens: int = 32, extra_args: list[str] | None = None,
    on_progress: Progress = lambda _: None,
) -> dict:
    """Build the tiny model and four adapters, serve them, and time the three modes in one server run."""
    with scratch_folder("cra-bench-serving-") as scratch:
        work = Path(scratch)
        on_progress("building the tiny model and four adapters")
        base = build_tiny_model(work / "tiny")
        stages = stages_of("reasoning")
        for i, stage in enumerate(stages):
            random_adapter(base, work / f"a{i}", seed=i + 1)
            register(work / "home", work / f"a{i}", name=f"{stage}-bench", stage=stage, base_model=str(base))
            promote(work / "home", f"{stage}-bench")
        endpoint = f"http://127.0.0.1:{free_port()}/v1"
        config = Config(
            models=ModelsConfig(reasoning=RoleModels(base=str(base), endpoint=endpoint)),
            serve=ServeConfig(python=python, max_model_len=512,
                              extra_args=extra_args if extra_args is not None else ["--kv-cache-memory-bytes", "256M"]),
        )
        plan = plan_serve(config, "reasoning", STAGE_ROLES, work / "home")
        on_progress("starting vLLM")
        server = start(plan, work / "home")
        try:
            process = psutil.Process(server.process.pid)
            idle_rss = _tree_rss(process)
            client = openai.OpenAI(base_url=endpoint, api_key="unused", timeout=120)
            adapters = [a.name for a in plan.adapters]
            modes = {}
            with PeakMemory(process) as peak:
                for label, models in (("base", [plan.base.served_name]), ("one_adapter", adapters[:1]),
                                      ("four_adapters_rotating", adapters)):
                    on_progress(f"timing {label}")
                    modes[label] = _mode(client, models, requests=requests, concurrency=concurrency, tokens=tokens)
        finally:
            server.stop()
    base_mode = modes["base"]
    for mode in modes.values():
        mode["latency_ratio_to_base"] = round(mode["latency_p50_ms"] / base_mode["latency_p50_ms"], 2)
        mode["throughput_ratio_to_base"] = round(mode["throughput_tok_s"] / base_mode["throughput_tok_s"], 2)
    return {
        "server_start_s": round(server.started_s, 1), "server_rss_idle_mib": round(idle_rss / 2**20),
        "server_rss_peak_mib": round(peak.peak / 2**20), "requests_per_mode": requests * 3, "concurrency": concurrency,
        "completion_tokens": tokens, "modes": modes, "command": plan.command,
    }


SWITCH_PROJECTS = ("pokeemerald", "pokefirered", "pokeruby")


def _latency(client: openai.OpenAI, model: str, tokens: int) -> float:
    """Seconds for one request of exactly `tokens` completion tokens to `model`."""
    began = time.perf_counter()
    client.chat.completions.create(model=model, messages=PROMPT, max_tokens=tokens, temperature=0,
                                   extra_body={"ignore_eos": True, "min_tokens": tokens})
    return time.perf_counter() - began


def bench_switch(python: str, *, base: Path | None = None, rounds: int = 12, tokens: int = 1,
                 extra_args: list[str] | None = None, on_progress: Progress = lambda _: None) -> dict:
    """Serve one scope adapter per project (one GPU slot, two kept in CPU memory) and time a project switch: a cold
    adapter (read from disk), a warm one (in its slot), one held in CPU memory, and one evicted from it. One token
    an answer by default: the time to the first token, where loading an adapter shows."""
    with scratch_folder("cra-bench-switch-") as scratch:
        work, home = Path(scratch), Path(scratch) / "home"
        if base is None:
            on_progress("building the tiny model")
            base = build_tiny_model(work / "tiny")
        for i, project in enumerate(SWITCH_PROJECTS):
            on_progress(f"making {project}'s adapter")
            random_adapter(base, work / project, seed=i + 1)
            register(home, work / project, name=f"scope-{project}", stage="scope", base_model=str(base),
                     project=project)
            promote(home, f"scope-{project}")
        endpoint = f"http://127.0.0.1:{free_port()}/v1"
        config = Config(
            models=ModelsConfig(reasoning=RoleModels(base=str(base), endpoint=endpoint)),
            serve=ServeConfig(python=python, max_model_len=1024, max_loras=1, max_cpu_loras=2,
                              extra_args=extra_args if extra_args is not None else ["--kv-cache-memory-bytes", "512M"]),
        )
        plan = plan_serve(config, "reasoning", STAGE_ROLES, home)
        on_progress("starting vLLM")
        server = start(plan, home)
        try:
            client = openai.OpenAI(base_url=endpoint, api_key="unused", timeout=300)
            _latency(client, plan.base.served_name, tokens)  # the first request of all pays for compilation, not LoRA
            first, second, third = (f"scope-{p}" for p in SWITCH_PROJECTS)
            on_progress("timing cold and warm adapters")
            cold = [_latency(client, name, tokens) for name in (first, second)]
            warm = [_latency(client, second, tokens) for _ in range(rounds)]
            on_progress("timing switches")
            cached = [_latency(client, (first, second)[i % 2], tokens) for i in range(rounds)]  # both in CPU memory
            evicting = [_latency(client, (first, second, third)[i % 3], tokens) for i in range(rounds)]  # LRU of two
        finally:
            server.stop()
    warm_ms = statistics.median(warm) * 1000

    def figure(times: list[float]) -> dict:
        ms = statistics.median(times) * 1000
        return {"median_ms": round(ms, 1), "max_ms": round(max(times) * 1000, 1), "ratio_to_warm": round(ms / warm_ms, 2),
                "requests": len(times)}

    return {"base": plan.base.name, "server_start_s": round(server.started_s, 1), "completion_tokens": tokens,
            "max_loras": 1, "max_cpu_loras": 2, "adapter_rank": plan.adapters[0].rank,
            "adapters": [a.name for a in plan.adapters],
            "modes": {"cold (first request, read from disk)": figure(cold), "warm (same adapter again)": figure(warm),
                      "switch, both in CPU memory": figure(cached), "switch, evicted from CPU memory": figure(evicting)},
            "command": plan.command}
