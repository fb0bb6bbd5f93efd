"""One exception type for bad user input.

Every message is a single line that names the field, file or line at fault; the CLI prints it
without a traceback and exits with status 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input from a user: a config field, a record, a file. The message names the culprit."""
