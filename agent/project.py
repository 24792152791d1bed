"""One indexed checkout as cra sees it, opened once per command or run: its paths, its index state, and the
reads the stages make of the index (search, symbols, files). Queries reuse it instead of finding the project again."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.builds import BuildEnvironment
from agent.config import ProjectPaths, ValidationSettings
from agent.index import query
from agent.index.build import IndexState, open_index
from agent.index.query import AGENT_KINDS, IndexedSymbol
from agent.retrieval import Searcher, SearchResults, SymbolInfo, searcher, symbol_info


@dataclass(frozen=True)
class Project:
    """An indexed checkout: `open` it once, then ask it."""

    home: str | Path | None
    paths: ProjectPaths
    state: IndexState

    @classmethod
    def open(cls, repo: Path, home: str | Path | None = None) -> Project:
        """The indexed checkout at `repo`; NotIndexed when it has no index yet."""
        paths, state = open_index(repo, home)
        return cls(home, paths, state)

    @property
    def repo(self) -> Path:
        """The checkout's top folder."""
        return self.paths.repo

    def searcher(self) -> Searcher:
        """The warm hybrid searcher over this index."""
        return searcher(self.paths, self.state)

    def search(self, text: str, **options) -> SearchResults:
        """Files and symbols for `text`, best first; see Searcher.search for the options."""
        return self.searcher().search(text, **options)

    def lookup_symbol(self, name: str) -> list[SymbolInfo]:
        """Every definition named `name`, with its declarations, callers and callees."""
        return symbol_info(self.paths, name)

    def symbols_in_files(self, files: Iterable[str], kinds: Iterable[str] = AGENT_KINDS) -> list[IndexedSymbol]:
        """Symbols defined in `files`, most central first."""
        return query.symbols_in_files(self.paths.store, files, kinds)

    def defined(self, names: Iterable[str]) -> dict[str, list[str]]:
        """For each name the index defines (not only declares), the files defining it."""
        return query.defined(self.paths.store, names)

    def indexed_files(self) -> set[str]:
        """Every file path in the index."""
        return query.indexed_files(self.paths.store)

    def builds(self, settings: ValidationSettings) -> BuildEnvironment:
        """How this checkout is built and where its built trees are kept."""
        return BuildEnvironment(repo=self.repo, settings=settings, trees=self.paths.builds)
