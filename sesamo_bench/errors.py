"""Typed exceptions for errors a user can cause.

The command line turns every :class:`UserError` into one line on stderr and exit code 2.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class of errors caused by user input (bad names, values or files)."""


class UnknownNameError(UserError, KeyError):
    r"""A registry lookup failed.

    The message names the alternatives, e.g. ``Unknown symmetry 'z3'. Available: u1, z2``.
    """

    def __init__(self, kind: str, name: str, available: list[str]):
        self.kind, self.name, self.available = kind, name, sorted(available)
        super().__init__(f"Unknown {kind} '{name}'. Available: {', '.join(self.available) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.args[0]


class ConfigError(UserError, ValueError):
    """A parameter has the wrong type or range, or an unknown key was given."""


class IncompatibleError(UserError, ValueError):
    """A combination that makes no sense (method x symmetry x target)."""


class StoreError(UserError, OSError):
    """The results store cannot be opened, read or written."""


class PluginError(UserError, ImportError):
    """A plugin file failed to import; the message names the file."""


class TargetError(UserError, RuntimeError):
    """A target's own code (its action, e.g. in a dropped-in plugin) raised; the message names the
    target and the exception."""


class InputOutsideDomain(ValueError):
    """A tensor handed to a transform has the wrong shape or lies outside its domain."""


class DivergedError(RuntimeError):
    """Training produced NaN or Inf; carries the step at which it happened."""

    def __init__(self, step: int, what: str):
        self.step, self.what = step, what
        super().__init__(f"non-finite {what} at step {step}")
