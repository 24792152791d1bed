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


class PatchConflict(CraError):
    """A run's patch does not apply to the user's working tree as it is now; nothing was changed."""


class EditError(CraError):
    """An edit block could not be applied; the message is written to be shown to the model as it is."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path
        self.block: int | None = None  # 1-based position of the failing block in its call, set by apply_edits
        self.blocks: int | None = None  # how many blocks that call had


class PathOutsideRepo(EditError):
    """An edit names a path outside the repository, or inside its .git."""


class BinaryFile(EditError):
    """An edit targets a file that is binary or not UTF-8 text."""


class MissingFile(EditError):
    """An edit targets a file that does not exist."""


class FileAlreadyExists(EditError):
    """An edit with an empty SEARCH block would create a file that already exists."""


class NoChange(EditError):
    """An edit whose REPLACE is its SEARCH (an empty file created from nothing included): it changes nothing."""


class NoMatch(EditError):
    """A SEARCH block matches nothing in its file, even ignoring whitespace."""


class AmbiguousMatch(EditError):
    """A SEARCH block matches more than one place in its file."""

    def __init__(self, message: str, *, path: str, lines: list[int]) -> None:
        super().__init__(message, path=path)
        self.lines = lines


class TrainingRefused(CraError):
    """An adapter cannot be trained as asked: the dataset or the base model is unfit; nothing was trained."""

    exit_code = 65  # EX_DATAERR


class DatasetTooSmall(TrainingRefused):
    """Too few training examples or preference pairs for a stage's recipe."""


class WrongModelFamily(TrainingRefused):
    """Training examples written for another base-model family than the base being trained."""


class MergedBaseModel(TrainingRefused):
    """The base folder holds a merged (base + adapter) model; adapters are trained on the frozen base only."""


class MissingExtra(CraError):
    """A command needs an optional part of cra that is not installed (training, or the Prefect flows)."""

    exit_code = 69  # EX_UNAVAILABLE
