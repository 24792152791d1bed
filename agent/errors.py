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


class ConfigError(CraError):
    """A config file is unreadable, malformed or names something unknown."""

    exit_code = 78  # EX_CONFIG


class UnsafeName(CraError):
    """A model or adapter name, or an adapter path, would reach outside where it belongs."""

    exit_code = 2


class ModelUnavailable(CraError):
    """The model server could not be reached or kept failing."""

    exit_code = 69  # EX_UNAVAILABLE


class InvalidModelOutput(CraError):
    """The model's answer did not meet the stage's schema, even after a repair attempt."""


class BadAdapter(CraError):
    """An adapter cannot be served: wrong base, rank, or files."""


class UnknownAdapter(CraError):
    """No adapter of that name is in the registry."""
