"""Errors a user can fix. The CLI turns each into a one-line message and a non-zero exit.

Every message says what is wrong, where, and how to fix it; core code raises these instead of
printing, so the same checks serve the CLI, the REPL and library users.
"""


class PoetgenError(Exception):
    """Base class: a problem with the user's input, not a bug in poetgen."""


class CorpusError(PoetgenError):
    """A text file cannot be used: missing, not UTF-8, or empty."""


class CheckpointError(PoetgenError):
    """A checkpoint is missing, corrupt, or does not match what it claims to be."""


class ConfigError(PoetgenError):
    """An option or config-file value is out of range or unknown."""


class ConstraintError(PoetgenError):
    """A set of generation constraints cannot be satisfied with this model's vocabulary."""


class NonFiniteLossError(PoetgenError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left untouched."""
