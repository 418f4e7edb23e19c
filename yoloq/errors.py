"""The exceptions yoloq raises: each carries one line a user can act on."""

from __future__ import annotations


class YoloqError(Exception):
    """Base of every yoloq error; ``str(err)`` is the one line shown to the user."""


class ConfigError(YoloqError):
    """A config file or value is invalid (names the key, the value and what is allowed)."""


class DataError(YoloqError):
    """A dataset, split, annotation file or image cannot be used."""


class ModelError(YoloqError):
    """The source model is missing, unreadable or not a detector."""


class BackendUnavailable(YoloqError):
    """A backend cannot run here (package not installed, no GPU); its variants are skipped."""


class HardwareMissing(BackendUnavailable):
    """What the variant runs on is not in this machine (an NVIDIA GPU): no set-up here can provide it."""


class ExportError(YoloqError):
    """An export or quantization step failed for one variant."""
