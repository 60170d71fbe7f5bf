"""One error hierarchy for the package: every problem a user can fix is an `Error`, which carries the exit
status the command line returns and, where there is one, the file:line or config key it is about.

Only `ernievil2.cli` turns errors into messages and exit codes (`ERNIEVIL2_DEBUG=1` shows tracebacks)."""


class Error(Exception):
    """A problem the user can fix.  `str(error)` is the one-line message; `where` (a path, `path:line` or a
    dotted config key) is prefixed to it when given separately."""

    exit_code = 2  # bad config or input

    def __init__(self, message, where=None):
        self.message = str(message)
        self.where = where
        super().__init__(f"{where}: {message}" if where else self.message)


class ConfigError(Error, ValueError):
    """A config that cannot be used; the message names the file and the dotted key."""


class InputError(Error, ValueError):
    """A missing or unusable input file (data, vocabulary, weights, embeddings, index)."""


class BadRowError(InputError):
    """A bad input row under `on_bad_row: error`; `bad` has path, line and reason."""

    exit_code = 1

    def __init__(self, bad):
        super().__init__(str(bad))
        self.bad = bad


class BadImageError(InputError):
    """Image bytes that cannot be decoded (any decoder failure) or would decode to more pixels than allowed: a
    counted bad row where rows are read, a 4xx from the service."""


class VocabError(InputError):
    """A vocabulary file that cannot be used; the message names the file and, where known, the line."""


class CheckpointError(InputError):
    """A weights file that cannot be used; the message names the file and what is wrong."""


class InferenceModelError(InputError):
    """An exported inference-model directory that cannot be used."""


class EmbeddingFileError(InputError):
    """An embedding file the evaluator or the index cannot use; the message names the file and line."""


class GalleryChangedError(InputError):
    """The gallery an index shows its images from was edited after the index was built (sync or rebuild it)."""


class ConvertError(InputError):
    """Data conversion input that cannot be used."""


class DemoDataError(Error, ValueError):
    """Bad demo-data parameters."""


class RuntimeSupportError(Error):
    """This machine (CPU instructions, CUDA) cannot run what was asked, e.g. bf16 without AVX512-BF16."""


class TrainingError(Error):
    """A run that cannot go on; the message says why and what is left on disk."""

    exit_code = 1


class ExportError(Error):
    """Exporting the towers failed (tracing, or the exported towers disagree with the eager model)."""

    exit_code = 1
