"""The one error type a bench user can cause and fix (the CLI turns it into exit status 2)."""

from envkit.cli_support import UsageError


class BenchInputError(UsageError, ValueError):
    """A request the user can fix: unknown backend/dtype, bad size, missing framework, no GPU.

    A `UsageError`, so the shared CLI layer prints it as one `error:` line with exit 2;
    a `ValueError` too, for callers of the bench functions that are not the CLI.
    """
