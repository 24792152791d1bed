"""One indexed checkout as cra sees it, opened once per command or run: its paths, its index state, and the
reads the stages make of the index (search, symbols, files) through its one IndexReader. Queries reuse it instead
of finding the project again; `close` it (or use it as a context manager) when done."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent import enrichment
from agent.builds import BuildEnvironment
from agent.config import ProjectPaths, ValidationSettings
from agent.index.build import IndexState, open_index
from agent.index.reader import AGENT_KINDS, IndexReader, Symbol, SymbolInfo
from agent.retrieval import Searcher, SearchResults, searcher


@dataclass(frozen=True)
class Project:
    """An indexed checkout: `open` it once, then ask it; its reader's connection opens at the first read."""

    home: str | Path | None
    paths: ProjectPaths
    state: IndexState
    index: IndexReader = field(repr=False, compare=False)

    @classmethod
    def open(cls, repo: Path, home: str | Path | None = None) -> Project:
        """The indexed checkout at `repo`; NotIndexed when it has no index yet."""
        paths, state = open_index(repo, home)
        return cls(home, paths, state, IndexReader(paths.store, paths.repo))

    def close(self) -> None:
        """Release the index's connection (the next read opens another): the indexer may write meanwhile."""
        self.index.close()

    def __enter__(self) -> Project:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def repo(self) -> Path:
        """The checkout's top folder."""
        return self.paths.repo

    def searcher(self) -> Searcher:
        """The warm hybrid searcher over this index."""
        return searcher(self.paths, self.state, self.index)

    def search(self, text: str, **options) -> SearchResults:
        """Files and symbols for `text`, best first; see Searcher.search for the options."""
        return self.searcher().search(text, **options)

    def lookup_symbol(self, name: str) -> list[SymbolInfo]:
        """Every definition named `name`, with its declarations, callers and callees."""
        return self.index.lookup(name)

    def symbols_in_files(self, files: Iterable[str], kinds: Iterable[str] = AGENT_KINDS) -> list[Symbol]:
        """Symbols defined in `files`, most central first."""
        return self.index.symbols_in_files(files, kinds)

    def history_notes(self, symbols: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The one-line history notes of `symbols` (name, path) that have one."""
        return {key: note.text() for key, note in self.index.notes_of(symbols).items()}

    def summaries(self, symbols: Iterable[Symbol]) -> dict[tuple[str, str], str]:
        """The model-written one-line summaries (`cra enrich`) of `symbols`' current bodies, by (name, path)."""
        found = enrichment.of_symbols(self.home, self.paths.root.name, self.paths.repo,
                                      ((s.path, s.name, s.start_line, s.end_line) for s in symbols if s.kind == "function"))
        return {(name, path): e.text() for (path, name), e in found.items()}

    def defined(self, names: Iterable[str]) -> dict[str, list[str]]:
        """For each name the index defines (not only declares), the files defining it."""
        return self.index.defined(names)

    def indexed_files(self) -> set[str]:
        """Every file path in the index."""
        return self.index.indexed_files()

    def builds(self, settings: ValidationSettings) -> BuildEnvironment:
        """How this checkout is built and where its built trees are kept."""
        return BuildEnvironment(repo=self.repo, settings=settings, trees=self.paths.builds)
