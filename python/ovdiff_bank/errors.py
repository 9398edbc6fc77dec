"""The exceptions of ovdiff_bank: one base class, :class:`Error`, and a subclass per case to handle.

Each carries the message the command line prints after ``ovdiff-bank: ``.
A wrong dtype, shape or channel count of an array raises :class:`ValueError`
instead.
"""

from __future__ import annotations

from typing import List

__all__ = [
    "Error",
    "BankNotFound",
    "EncoderMismatch",
    "BadImage",
    "UnknownClass",
    "BankLocked",
]


class Error(Exception):
    """Base class of every ovdiff_bank error; ``message`` is the CLI's message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BankNotFound(Error):
    """No bank (folder or ``.ovbank`` file) at ``path``."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class EncoderMismatch(Error):
    """The bank's classes were built with encoders that are not the ones available.

    ``bank_fingerprints``: the encoders the query's classes share (as the bank
    recorded them); ``encoder_fingerprints``: those installed under
    ``<home>/models`` (or given with ``encoders=``).
    """

    def __init__(
        self, message: str, bank_fingerprints: List[str], encoder_fingerprints: List[str]
    ) -> None:
        super().__init__(message)
        self.bank_fingerprints = list(bank_fingerprints)
        self.encoder_fingerprints = list(encoder_fingerprints)


class BadImage(Error):
    """An image that cannot be read or decoded; ``path`` names the file."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class UnknownClass(Error):
    """A class that is not in the bank; ``suggestions`` are the closest names."""

    def __init__(self, message: str, name: str, suggestions: List[str]) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)


class BankLocked(Error):
    """Another process has the bank at ``path`` open for writing."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path
