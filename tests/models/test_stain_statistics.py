import numpy as np
import pytest
import torch
from skimage.feature import local_binary_pattern

from storm_sc.models import StormConfig
from storm_sc.models._augment import _RGB_FROM_HED
from storm_sc.models._network import StormNetwork
from storm_sc.models._stain_statistics import (
    _LBP_CODES,
    N_STATISTICS,
    N_TEXTURE_STATISTICS,
    StainStatisticsEncoder,
    stain_statistics,
    texture_statistics,
)


def _stained(h: float, e: float, size: int = 16) -> torch.Tensor:
    """A uniform patch with the given haematoxylin and eosin optical densities, RGB in [0, 1]."""
    od = h * _RGB_FROM_HED[0] + e * _RGB_FROM_HED[1]
    return torch.exp(-od).view(1, 3, 1, 1).expand(1, 3, size, size).clone()


def test_statistics_read_stain_amounts():
    hema, eosin = stain_statistics(_stained(1.0, 0.1)), stain_statistics(_stained(0.1, 1.0))
    assert hema.shape == (1, N_STATISTICS)
    # Per channel: mean, sd, q10, q50, q90; channels R, G, B, H, E, residual -> the H mean is column 15.
    h_mean, e_mean = 3 * 5, 4 * 5
    assert hema[0, h_mean] > 0.8 and eosin[0, h_mean] < 0.3
    assert eosin[0, e_mean] > 0.8 and hema[0, e_mean] < 0.3
    # Uniform patches have no texture: zero spread at every scale and no gradient.
    assert torch.allclose(hema[0, 30:], torch.zeros(N_STATISTICS - 30), atol=1e-5)


def test_texture_statistics_see_structure():
    flat = _stained(0.5, 0.5, size=32)
    checker = flat.clone()
    checker[..., ::2, :] = _stained(1.5, 0.5, size=32)[..., ::2, :]
    assert stain_statistics(checker)[0, -2:].min() > stain_statistics(flat)[0, -2:].max() + 0.1


def test_encoder_is_differentiable_and_optional():
    enc = StainStatisticsEncoder(8)
    out = enc(torch.rand(3, 3, 16, 16))
    out.sum().backward()
    assert out.shape == (3, 8) and all(p.grad is not None for p in enc.parameters())

    with_stats = StormNetwork(StormConfig(image_size=16, cnn_channels=(4, 8), hidden_dim=16, heads=2), n_genes=5)
    without = StormNetwork(
        StormConfig(image_size=16, cnn_channels=(4, 8), hidden_dim=16, heads=2, stain_statistics=False), n_genes=5
    )
    assert with_stats.stain_statistics is not None and without.stain_statistics is None
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    assert with_stats.encode_morphology(images).shape == without.encode_morphology(images).shape == (2, 16)


def test_statistics_computed_for_the_readout_are_read_once():
    torch.manual_seed(0)
    network = StormNetwork(StormConfig(image_size=16, cnn_channels=(4, 8), hidden_dim=16, heads=2), n_genes=5).eval()
    images = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    stats = network.patch_statistics(images)
    with torch.no_grad():
        own = network.encode_morphology(images)
        torch.testing.assert_close(network.encode_morphology(images, statistics=stats), own)
        # The given statistics are what the stain path reads (no second computation behind them).
        assert not torch.allclose(network.encode_morphology(images, statistics=torch.zeros_like(stats)), own)


@pytest.mark.parametrize("smoothing", [0, 2])
def test_local_binary_patterns_are_the_classical_uniform_descriptor(smoothing):
    # The same histogram as scikit-image's uniform LBP (8 neighbours on a circle of radius 1) on the interior pixels,
    # on noise and on smooth, tie-rich images.
    rng = np.random.default_rng(smoothing)
    grey = rng.integers(0, 256, (40, 40)).astype(np.float64)
    if smoothing:
        grey = np.repeat(np.repeat(grey[::smoothing, ::smoothing], smoothing, 0), smoothing, 1)
    grey_u8 = grey.astype(np.uint8)
    codes = local_binary_pattern(grey_u8, 8, 1, method="uniform").astype(int)[1:-1, 1:-1]
    expected = np.bincount(codes.ravel(), minlength=_LBP_CODES) / codes.size
    rgb = torch.from_numpy(grey_u8 / 255.0).float().expand(1, 3, 40, 40)  # grey RGB: luma = the grey value
    torch.testing.assert_close(texture_statistics(rgb)[0, :_LBP_CODES], torch.from_numpy(expected).float())


def test_texture_statistics_tell_edges_from_flat_stain():
    flat = _stained(0.5, 0.5, size=32)
    stripes = flat.clone()
    stripes[..., ::4, :] = _stained(1.5, 0.5, size=32)[..., ::4, :]
    a, b = texture_statistics(flat)[0], texture_statistics(stripes)[0]
    assert a.shape == (N_TEXTURE_STATISTICS,)
    # A flat patch: every neighbour ties with its centre (all-ones code), and no edges or detail.
    assert a[_LBP_CODES - 2] == 1.0 and torch.allclose(a[_LBP_CODES:], torch.zeros(8), atol=1e-5)
    assert (b[_LBP_CODES:] > 0.05).all()
    with pytest.raises(ValueError, match="at least 3 x 3"):
        texture_statistics(torch.rand(1, 3, 2, 8))


def test_texture_statistics_widen_the_stain_path_and_old_checkpoints_load_without_them():
    config = StormConfig(image_size=16, cnn_channels=(4, 8), hidden_dim=16, heads=2)
    with_texture, without = StormNetwork(config, n_genes=5), StormNetwork(config.replace(texture_statistics=False), 5)
    assert with_texture.n_statistics == N_STATISTICS + N_TEXTURE_STATISTICS and without.n_statistics == N_STATISTICS
    images = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    assert with_texture.patch_statistics(images).shape == (2, with_texture.n_statistics)
    assert with_texture.encode_morphology(images).shape == (2, 16)
    # A config saved before the field existed rebuilds the network it was trained with.
    saved = config.to_dict()
    del saved["texture_statistics"]
    assert StormConfig.from_dict(saved).texture_statistics is False
