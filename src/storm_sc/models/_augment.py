"""Stain (colour) augmentation of H&E patches in torch, in haematoxylin-eosin-DAB optical-density space."""

from __future__ import annotations

import torch

# Stain vectors (rows: haematoxylin, eosin, DAB) of Ruifrok & Johnston (2001), as used by skimage.color.
_RGB_FROM_HED = torch.tensor(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]],
    dtype=torch.float32,
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)


def stain_jitter(images: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Perturb the stain concentrations of RGB patches: ``hed' = hed * alpha + beta`` per patch and stain.

    Scanners and staining protocols shift the amount and hue of haematoxylin and eosin between slides; jittering
    stain concentrations (not raw RGB) mimics that variation without producing colours H&E cannot have.

    Parameters
    ----------
    images
        ``(n, 3, h, w)`` uint8 RGB patches (or floats in ``[0, 255]``).
    alpha
        ``(n, 3)`` multiplicative factors (1 = unchanged) for haematoxylin, eosin and DAB.
    beta
        ``(n, 3)`` additive shifts of the optical densities (0 = unchanged).

    Returns
    -------
    ``(n, 3, h, w)`` float32 RGB in ``[0, 255]``.

    Examples
    --------
    >>> import torch
    >>> from storm_sc.models import stain_jitter
    >>> imgs = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    >>> out = stain_jitter(imgs, torch.ones(2, 3), torch.zeros(2, 3))
    >>> bool(torch.allclose(out, imgs.float(), atol=0.5))
    True
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"`images` must be (n, 3, h, w); got {tuple(images.shape)}.")
    if alpha.shape != (images.shape[0], 3) or beta.shape != (images.shape[0], 3):
        raise ValueError(f"`alpha` and `beta` must be ({images.shape[0]}, 3).")
    dev = images.device
    # float32 even under mixed-precision autocast (which would run the einsums in bf16): the round trip through
    # optical densities must give back the input colours, not shift them by a few grey levels.
    with torch.autocast(dev.type, enabled=False):
        x = images.float().clamp(min=1.0) / 255.0
        od = -torch.log(x)
        hed = torch.einsum("nchw,cd->ndhw", od, _HED_FROM_RGB.to(dev))
        hed = hed * alpha.to(dev, torch.float32)[:, :, None, None] + beta.to(dev, torch.float32)[:, :, None, None]
        od = torch.einsum("ndhw,dc->nchw", hed, _RGB_FROM_HED.to(dev))
        return (torch.exp(-od) * 255.0).clamp(0.0, 255.0)
