"""Errors glann raises on bad input. Each message names the problem and the fix in one line."""


class GlannError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""


class ConfigError(GlannError):
    """Unknown config key, wrong type or a value out of range."""


class DataError(GlannError):
    """Dataset missing, unreadable, corrupt, or of a shape the config cannot take."""


class WeightsError(GlannError):
    """Pretrained weights (VGG, LPIPS, Inception) missing and not downloadable."""


class CheckpointError(GlannError):
    """Run directory without the checkpoint or export that was asked for, or an unreadable one."""


class TrainingError(GlannError):
    """Training cannot go on (for example a non-finite loss)."""


class ResourceError(GlannError):
    """More memory asked for than the machine (or GPU) has free."""
