"""Which model answers each stage in a project: explicit override, then the project's active adapter, its family's,
the home's, the role's default, the base."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.config import Config, RoleModels
from agent.errors import ConfigError
from agent.llm.adapters import BaseModel, describe_base
from agent.llm.names import check_name
from agent.llm.registry import Adapter, active_adapters, list_adapters
from agent.llm.roles import ROLES, Role, Routing
from agent.projects import HOME_SCOPE, scopes_for

Source = Literal["override", "project", "family", "adapter", "role-default", "base"]


@dataclass(frozen=True)
class Resolution:
    """The model one stage will ask for, and why."""

    stage: str
    role: Role
    model: str
    source: Source
    reason: str
    base: BaseModel
    server: RoleModels
    adapter: Adapter | None = None
    passed_over: tuple[str, ...] = field(default=())
    project: str | None = None  # the project it was resolved for; None: any (the home's adapters only)

    @property
    def base_name(self) -> str:
        """The base model's name on its server: what a fallback asks for."""
        return self.base.served_name


def trained_on(adapter: Adapter, base: BaseModel) -> bool:
    """Whether `adapter` was trained on `base`: same fingerprint when both are known, else the same name."""
    if adapter.base_fingerprint and base.fingerprint:
        return adapter.base_fingerprint == base.fingerprint
    return Path(adapter.base_model.rstrip("/")).name.lower() == Path(base.name.rstrip("/")).name.lower()


def check_overrides(config: Config, routing: Routing) -> None:
    """Every `[models.overrides]` key names a stage; any other is a config error naming the files."""
    unknown = sorted(set(config.models.overrides) - set(routing))
    if unknown:
        raise ConfigError(f"bad config in {' + '.join(config.sources) or 'defaults'}: models.overrides: unknown stage "
                          f"{', '.join(unknown)}; stages are {', '.join(routing)}")


def _scope_reason(scope: str, stage: str, adapter: Adapter, project: str | None) -> tuple[Source, str]:
    """The source and reason for an adapter active in `scope`."""
    if scope == HOME_SCOPE:
        return "adapter", f"active {stage} adapter (rank {adapter.rank})"
    kind, name = scope.split(":", 1)
    if kind == "project":
        return "project", f"{name}'s active {stage} adapter (rank {adapter.rank})"
    return "family", f"active {stage} adapter of family {name}, which {project} is in (rank {adapter.rank})"


def resolve_stage(stage: str, role: Role, config: Config, registry: list[Adapter],
                  bases: dict[Role, BaseModel], project: str | None = None) -> Resolution:
    """Resolve one stage of `project`, answered by `role`, from the config, the registered adapters and the bases."""
    server = config.models.role(role)
    base = bases[role]
    by_name = {a.name: a for a in registry}
    passed: list[str] = []

    def chosen(model: str, source: Source, reason: str, adapter: Adapter | None = None) -> Resolution:
        return Resolution(stage, role, model, source, reason, base, server, adapter, tuple(passed), project)

    override = config.models.overrides.get(stage)
    if override:
        check_name(override, what=f"override for {stage}")
        adapter = by_name.get(override)
        if adapter is None:
            return chosen(override, "override", f"[models.overrides] {stage} = {override}")
        if trained_on(adapter, base):
            return chosen(adapter.name, "override", f"[models.overrides] {stage} = adapter {adapter.name}", adapter)
        passed.append(f"override {override}: trained on {adapter.base_model}, but the {role} server serves {base.name}")
    for scope in scopes_for(config, project):
        for adapter in (a for a in registry if a.stage == stage and scope in a.active_in):
            if trained_on(adapter, base):
                return chosen(adapter.name, *_scope_reason(scope, stage, adapter, project), adapter)
            passed.append(f"active adapter {adapter.name}: trained on {adapter.base_model}, not {base.name}")
    if server.default:
        check_name(server.default, what=f"[models.{role}] default")
        return chosen(server.default, "role-default", f"[models.{role}] default")
    return chosen(base.served_name, "base", f"{role} base model" + (" (no usable adapter)" if passed else ""))


def describe_bases(config: Config) -> dict[Role, BaseModel]:
    """Each role's base model, with its fingerprint where its files are local."""
    return {role: describe_base(config.models.role(role).base) for role in ROLES}


def candidate_adapters(config: Config, home: str | Path | None) -> list[Adapter]:
    """The registered adapters resolution may choose: the active ones, and any not retired an override may name."""
    return [a for a in list_adapters(home) if a.status != "retired"] if config.models.overrides else active_adapters(home)


def resolve_all(config: Config, home: str | Path | None, routing: Routing,
                project: str | None = None) -> list[Resolution]:
    """Every stage's resolution in `project`, in `routing`'s order (the pipeline's)."""
    check_overrides(config, routing)
    registry = candidate_adapters(config, home)
    bases = describe_bases(config)
    return [resolve_stage(stage, role, config, registry, bases, project) for stage, role in routing.items()]
