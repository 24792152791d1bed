"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""


class CraError(Exception):
    """Base class: a problem the user can act on, shown as a clear message."""

    exit_code = 1


class NotAGitRepository(CraError):
    """The path given is not inside a git work tree."""


class EmptyRepository(CraError):
    """The repository has no commits to index."""


class NotIndexed(CraError):
    """The project has no index yet."""


class IndexBusy(CraError):
    """Another process holds the project's index lock."""

    exit_code = 75  # EX_TEMPFAIL


class StoreBusy(CraError):
    """The DuckDB store stayed locked by another process past the wait limit."""

    exit_code = 75


class MissingObjects(CraError):
    """Git objects needed for this operation are absent (partial or shallow clone)."""


class UnknownSymbol(CraError):
    """No symbol of that name is in the index."""


class InvalidInput(CraError):
    """An argument or input file is malformed."""

    exit_code = 2
