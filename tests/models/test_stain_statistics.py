import torch

from storm_sc.models import StormConfig
from storm_sc.models._augment import _RGB_FROM_HED
from storm_sc.models._network import StormNetwork
from storm_sc.models._stain_statistics import N_STATISTICS, StainStatisticsEncoder, stain_statistics


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
