"""Other samplers over a GLANN run's own codes, to show where quality is lost.

Scored beside the run's IMLE samples by `glann evaluate`:
- `reconstructions`: G(z_i) for training codes, the ceiling any sampler over these codes can reach;
- `gaussian`: one full-covariance Gaussian fitted to the codes (GLO's own sampler);
- `mixture`: a Gaussian mixture fitted to the codes (RAE's sampler, Ghosh et al. 2020).
If the reconstructions score well and the IMLE samples do not, the mapper limits the quality;
IMLE earns its place when its samples beat the mixture's.
"""
from __future__ import annotations

import torch

from ..nets import MIXTURE_MAX_CODES, MixturePrior
from ..sampler import Sampler

MIXTURE_COMPONENTS = 50


def code_samplers(codes: torch.Tensor, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Latents (float n x nz each) from the three baselines fitted to `codes` (float N x nz)."""
    codes = codes.float().cpu()
    g = torch.Generator().manual_seed(seed + 31)
    out = {"reconstructions": codes[torch.randperm(len(codes), generator=g)[:n]]}
    mean, cov = codes.mean(0), torch.cov(codes.T.double()) + 1e-6 * torch.eye(codes.shape[1], dtype=torch.float64)
    eps = torch.randn(n, codes.shape[1], generator=g, dtype=torch.float64)
    out["gaussian"] = (mean.double() + eps @ torch.linalg.cholesky(cov).T).float()
    # the model.mapper_prior=mixture start at its default 50 components (not the run's own setting)
    prior = MixturePrior(MIXTURE_COMPONENTS, codes.shape[1])
    prior.fit(codes, seed=seed)  # on at most MIXTURE_MAX_CODES of them, as training's mixture start
    out["mixture"] = prior(torch.randn(n, codes.shape[1] + 1, generator=g))
    out["mixture_components"] = torch.tensor(prior.fitted_components)
    return out


def baseline_images(sampler: Sampler, codes: torch.Tensor, n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict]:
    """Images (float n x C x H x W in [0, 1]) of each baseline, decoded by the run's generator,
    and what was fitted (for the protocol)."""
    latents = code_samplers(codes, n, seed)
    k = int(latents.pop("mixture_components"))
    images = {name: sampler.decode(z.to(sampler.device)).cpu() for name, z in latents.items()}
    return images, {"mixture_components": k, "mixture_fit_codes": min(len(codes), MIXTURE_MAX_CODES),
                    "codes": int(len(codes))}
