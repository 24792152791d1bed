"""Where cra keeps its state: the cra home, one folder per project, outside the user's checkout."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "CRA_HOME"


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
    def index_lock(self) -> Path:
        """The lock file held while the index is written."""
        return self.root / "index.lock"


def project_paths(repo: Path, home: str | Path | None = None) -> ProjectPaths:
    """The state folder for the repository at `repo`: its name plus a hash of its real path."""
    repo = repo.resolve()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", repo.name).strip("-") or "repo"
    digest = hashlib.sha1(str(repo).encode()).hexdigest()[:10]
    return ProjectPaths(repo=repo, root=cra_home(home) / "projects" / f"{slug}-{digest}")
