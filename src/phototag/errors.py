"""The errors phototag reports to a user: one base class, with what the CLI exit code and the HTTP status need.

Anything raised as a :class:`PhototagError` (or as ``ValueError`` / ``OSError`` / ``ImportError`` from the library's
checks) is a problem with the input, the model files or the installation: the CLI prints it as one line and exits 2,
the service answers with its status. Any other exception is a bug: the CLI shows the traceback, asks for a report
and exits 3.
"""

from __future__ import annotations


class PhototagError(Exception):
    """Base of the errors phototag explains in one line.

    Attributes:
        exit_code: The CLI's exit code for it.
        http_status: The HTTP status the service answers with.
        code: A short machine-readable name (the service's problem ``type``).
    """

    exit_code = 2
    http_status = 422
    code = "invalid_request"


class BadInputError(PhototagError, ValueError):
    """A value, file or setting the user gave is not acceptable."""


class ModelFormatError(PhototagError, ValueError):
    """A model directory is missing, damaged or from an incompatible phototag version."""

    http_status = 500
    code = "model_error"


class MissingDependencyError(PhototagError, ImportError):
    """A command needs a package (an extra) this installation lacks; the message names what to install."""

    http_status = 501
    code = "not_installed"


class EnvironmentProblem(PhototagError, RuntimeError):
    """The machine cannot do what was asked (no CUDA provider, no exiftool, a graph that cannot be loaded)."""

    http_status = 503
    code = "unavailable"
