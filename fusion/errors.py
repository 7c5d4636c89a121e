"""Errors the package raises on bad input; every one is a ``ValueError`` that names its cause."""

from __future__ import annotations


class FusionInputError(ValueError):
    """Bad input: a shape, attribute or statistic the op cannot accept.

    ``node`` names the ONNX node (or the public function) the input belongs to, so that a message read
    from a long model check says where to look.
    """

    def __init__(self, cause: str, *, node: str | None = None):
        self.cause = cause
        self.node = node
        super().__init__(f"{node}: {cause}" if node else cause)


class UnsafeFoldError(FusionInputError):
    """A fold that would not be exact (a shift before a padded convolution)."""


class StepTimeout(FusionInputError):
    """A step (the oracle, the reference) that took longer than its time limit: the model is too slow to judge."""


class TooLarge(FusionInputError):
    """A model whose estimated memory needs exceed the limit: refused before anything is allocated."""
