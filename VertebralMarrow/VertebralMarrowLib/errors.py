"""The one exception type for bad input: the CLI prints it as a single `error: ...` line."""


class InputError(ValueError):
    """Input the analysis cannot use; the message names the problem and, where it helps, the fix."""
