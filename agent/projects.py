"""Projects: a decomp checkout's identity (its name and root commit, the same in every clone), the families of
projects the config names, and the scopes an adapter serves: one project, one family, or the whole home.

Every record that belongs to a project (training examples, adapters, gate decisions) carries the project's name;
the checkouts seen for each project are kept here, so a name is never given to two different histories.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import duckdb

from agent import repo as git_repo
from agent.config import Config, check_project_name, load_config, project_paths
from agent.errors import InvalidInput
from agent.store import connect, utc_now
from agent.store.ledger import LEDGER, ledger

HOME_SCOPE = "home"  # adapters trained and promoted for every project of the home (all adapters before projects)


@LEDGER.migration
def l009_checkouts(con: duckdb.DuckDBPyConnection) -> None:
    """The checkouts cra has worked in, each with its project's name and root commit."""
    con.execute(
        """
        CREATE TABLE checkouts (
            path TEXT PRIMARY KEY,           -- the checkout's real path
            project TEXT NOT NULL,           -- its project's name
            root_commit TEXT,                -- its history's first commit: the same in every clone
            seen_at TIMESTAMP NOT NULL
        )
        """
    )


@dataclass(frozen=True)
class ProjectId:
    """A project: its name (as the config's families list it) and its history's root commit."""

    name: str
    root_commit: str | None


def identify(repo: Path, config: Config | None = None) -> ProjectId:
    """The project of the checkout at `repo`: `[project] name`, else its origin's repository name, else its folder's."""
    repo = repo.resolve()
    config = config or load_config(repo)
    name = config.project.name or _origin_name(repo) or _plain(repo.name)
    try:
        roots = git_repo.git(repo, "rev-list", "--max-parents=0", "HEAD").decode().split()
    except git_repo.GitError:
        roots = []
    return ProjectId(name, min(roots) if roots else None)


def _origin_name(repo: Path) -> str | None:
    """The repository name in the origin remote's URL (`github.com/pret/pokeemerald.git` -> pokeemerald); None when
    there is no origin or it is a folder on this machine (a mirror's folder is often just `repo`)."""
    url = git_repo.git(repo, "config", "--get", "remote.origin.url", check=False).decode().strip()
    if not re.match(r"^[a-z][a-z0-9+.-]*://|^[^/]+@[^/:]+:", url):
        return None
    name = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    return _plain(name) if name else None


def _plain(name: str) -> str:
    """`name` with what cannot name a project replaced, so a folder called `my emerald` is project my-emerald."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-._") or "project"


@lru_cache(maxsize=256)
def project_of(path: str) -> str:
    """The project name of a checkout recorded by its path; the folder's name where the checkout is gone."""
    where = Path(path)
    return identify(where).name if (where / ".git").exists() else _plain(where.name)


def register(home: str | Path | None, repo: Path, config: Config | None = None) -> ProjectId:
    """Record the checkout at `repo` under its project; refuse a name another history already has."""
    project = identify(repo, config)
    with ledger(home) as con:
        clash = con.execute("SELECT path, root_commit FROM checkouts WHERE project = ? AND root_commit IS NOT NULL"
                            " AND root_commit <> ? AND path <> ? LIMIT 1",
                            [project.name, project.root_commit or "", str(repo.resolve())]).fetchone()
        if clash and project.root_commit:
            raise InvalidInput(f"project {project.name} in this cra home is the checkout {clash[0]}, whose history "
                               f"starts at {clash[1][:12]}; {repo} starts at {project.root_commit[:12]}: set "
                               f"[project] name in {repo / 'cra.toml'} to tell them apart")
        con.execute("INSERT OR REPLACE INTO checkouts VALUES (?, ?, ?, ?)",
                    [str(repo.resolve()), project.name, project.root_commit, utc_now()])
    return project


@dataclass(frozen=True)
class Checkout:
    """A checkout seen for a project."""

    path: Path
    project: str
    root_commit: str | None
    seen_at: datetime


def checkouts(home: str | Path | None) -> list[Checkout]:
    """Every checkout recorded in the home, by project then path."""
    with ledger(home) as con:
        rows = con.execute("SELECT path, project, root_commit, seen_at FROM checkouts ORDER BY project, path").fetchall()
    return [Checkout(Path(r[0]), r[1], r[2], r[3]) for r in rows]


def families_of(config: Config, project: str) -> list[str]:
    """The families of projects `project` belongs to, in the config's order."""
    return [family for family, members in config.projects.items() if project in members]


def members(config: Config, family: str) -> list[str]:
    """The projects of `family`; an unknown family is an error naming the known ones."""
    if family not in config.projects:
        known = ", ".join(config.projects) or "none"
        raise InvalidInput(f"no family of projects named {family!r} in the config (known: {known}); add it under "
                           f'[projects], e.g. {family} = ["pokeemerald", "pokeruby"]')
    return config.projects[family]


def checked_name(name: str) -> str:
    """`name` if it can name a project or a family; else InvalidInput saying what can."""
    try:
        return check_project_name(name)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc


def project_scope(name: str) -> str:
    """The scope of adapters that serve one project."""
    return f"project:{checked_name(name)}"


def family_scope(name: str) -> str:
    """The scope of adapters that serve a family's projects."""
    return f"family:{checked_name(name)}"


def scopes_for(config: Config, project: str | None) -> list[str]:
    """Where a stage's adapter is looked for, first to last: the project, its families, then the home."""
    if project is None:
        return [HOME_SCOPE]
    return [project_scope(project), *(family_scope(f) for f in families_of(config, project)), HOME_SCOPE]


@dataclass(frozen=True)
class Overview:
    """What the home holds for one project: its checkouts and their index, its adapters and its last run."""

    name: str
    root_commit: str | None
    families: list[str]
    checkouts: dict[str, dict | None]  # path -> {"commit", "indexed_at"} of its index, None when not indexed
    adapters: dict[str, str]  # stage -> "adapter (scope)" active for the project: its own, its family's or the home's
    last_run: dict | None  # {"id", "task", "status", "started_at"}


def overview(home: str | Path | None, config: Config) -> list[Overview]:
    """Every project the home has a checkout of, by name: index state, active adapters and last run."""
    from agent.index.build import read_state  # here: the registry imports this module and stays light
    from agent.llm.registry import active_adapters
    from agent.runs import list_runs

    seen = checkouts(home)
    active = active_adapters(home)
    found = []
    for name in sorted({c.project for c in seen}):
        mine = [c for c in seen if c.project == name]
        indexed: dict[str, dict | None] = {}
        for c in mine:
            store = project_paths(c.path, home).store
            state = None
            if store.exists():
                con = connect(store, read_only=True)
                try:
                    state = read_state(con)
                    when = con.execute("SELECT indexed_at FROM index_state").fetchone() if state else None
                finally:
                    con.close()
            indexed[str(c.path)] = {"commit": state.commit, "indexed_at": when[0]} if state else None
        adapters: dict[str, str] = {}
        for scope in scopes_for(config, name):
            for a in active:
                if scope in a.active_in:
                    adapters.setdefault(a.stage, f"{a.name} ({scope})")
        runs = sorted((r for c in mine if c.path.exists() for r in list_runs(home, limit=1, repo=c.path)),
                      key=lambda r: r.started_at, reverse=True)
        last = {"id": runs[0].id, "task": runs[0].task, "status": runs[0].status,
                "started_at": runs[0].started_at} if runs else None
        found.append(Overview(name, mine[0].root_commit, families_of(config, name), indexed, adapters, last))
    return found
