"""The exceptions of the local stack, one hierarchy for the whole `stack` package.

Messages say what failed and what to do next (which log to read, which command to run).
"""

from __future__ import annotations


class StackError(Exception):
    """Something in the local service stack failed; the message says what to do next."""


class PackageError(StackError):
    """A system or Python package could not be found or installed."""


class StartError(StackError):
    """A component did not become healthy."""


class PortInUseError(StartError):
    """A port a component needs is taken by a process the component did not start."""
