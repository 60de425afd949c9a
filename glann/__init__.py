"""glann: GLANN (GLO + IMLE) non-adversarial image generation.

    from glann import Sampler, load_config, train
    run = train(load_config("configs/fashion_mnist.yaml", ["glo.epochs=5"]))
    x = Sampler.from_pretrained(run).sample(64, seed=0)   # float N x C x H x W in [0, 1]
"""
from typing import TYPE_CHECKING, Any

from .config import GlannConfig, load_config
from .errors import GlannError

if TYPE_CHECKING:
    from .pipeline import train
    from .sampler import Sampler

__all__ = ["GlannConfig", "GlannError", "Sampler", "load_config", "train"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """`train` and `Sampler` import torch on first use, so `glann --help` and the CLI's error
    handling (Ctrl-C included) are in place before torch loads."""
    if name == "train":
        from .pipeline import train

        return train
    if name == "Sampler":
        from .sampler import Sampler

        return Sampler
    raise AttributeError(f"module 'glann' has no attribute '{name}'")
