"""The one exception type for bad input: the CLI prints it as a single `error: ...` line."""

from __future__ import annotations

from typing import Optional


class InputError(ValueError):
    """Input the analysis cannot use; the message names the problem and, where it helps, the fix.

    `field` names the setting concerned (an Options field, see core.criteria.SETTINGS), so each
    front door can say it its own way: the command line by its flag, the panel by its label."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field
