"""The one error type a user sees: bad input named with its file and problem (CLI exit code 2)."""

from __future__ import annotations


class InputError(Exception):
    """A problem with something the user gave us (a file, a config value, a model name).

    The message must name the file or setting and say what is wrong, on one line; the CLI prints it
    as ``error: <message>`` and exits with code 2.
    """
