"""glann: GLANN (GLO + IMLE) non-adversarial image generation.

    from glann import Sampler, load_config, train
    run = train(load_config("configs/fashion_mnist.yaml", ["glo.epochs=5"]))
    x = Sampler.from_pretrained(run).sample(64, seed=0)   # float N x C x H x W in [0, 1]
"""
from .config import GlannConfig, load_config
from .errors import GlannError
from .pipeline import train
from .sampler import Sampler

__all__ = ["GlannConfig", "GlannError", "Sampler", "load_config", "train"]
__version__ = "0.1.0"
