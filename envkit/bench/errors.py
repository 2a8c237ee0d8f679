"""The one error type a bench user can cause and fix (the CLI turns it into exit status 2)."""


class BenchInputError(ValueError):
    """A request the user can fix: unknown backend/dtype, bad size, missing framework, no GPU."""
