import math

import pytest
import torch
from torch import nn

from storm_sc.models import LossWeights, StormNetwork, get_config, stain_jitter
from storm_sc.models._losses import gaussian_nll, info_nce

N_GENES = 50


def _params_without_grad(net: StormNetwork) -> list[str]:
    return [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]


@pytest.mark.parametrize(("image", "expression"), [(True, True), (True, False), (False, True)])
def test_losses_backward_with_any_modality_missing(batch_factory, image, expression):
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES)
    batch = batch_factory(cfg, N_GENES, image=image, expression=expression)
    losses = net.losses(batch)
    assert set(losses) == {"loss", "contrastive", "context_contrastive", "masked_expression", "predicted_expression"}
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    # data-parallel training needs a gradient (possibly zero) for every parameter in every step
    assert _params_without_grad(net) == []
    if not (image and expression):
        assert float(losses["contrastive"].detach()) == 0.0
    if not image:
        assert float(losses["predicted_expression"].detach()) == 0.0


def test_embed_batch_shapes_and_modalities(batch_factory):
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES).eval()
    batch = batch_factory(cfg, N_GENES, b=5)
    with torch.no_grad():
        both = net.embed_batch(batch)
        image_only = net.embed_batch(batch, use_expression=False)
        expr_only = net.embed_batch(batch, use_image=False)
    assert both["joint"].shape == (5, cfg.embed_dim)
    for level in ("observation", "niche", "region"):
        assert both[level].shape == (5, cfg.hidden_dim)
    assert not torch.allclose(both["joint"], image_only["joint"])
    assert not torch.allclose(image_only["joint"], expr_only["joint"])


def test_context_grad_changes_gradients_not_values(batch_factory):
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES)
    batch = batch_factory(cfg, N_GENES)
    torch.manual_seed(0)  # the same random neighbour subsets of the context views in both calls
    with_grad = net.losses(batch, context_grad=True)
    torch.manual_seed(0)
    without = net.losses(batch, context_grad=False)
    assert torch.allclose(with_grad["loss"], without["loss"])
    with_grad["loss"].backward()
    g1 = net.morphology.out.weight.grad.clone()
    net.zero_grad()
    without["loss"].backward()
    assert not torch.allclose(g1, net.morphology.out.weight.grad)


def test_loss_weights_select_objectives(batch_factory):
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES)
    batch = batch_factory(cfg, N_GENES)
    only = net.losses(batch, weights=LossWeights(0, 0, 1, 0), augment=False)
    assert torch.allclose(only["loss"], only["masked_expression"])


def test_vit_features_and_module_backbones(batch_factory):
    vit = get_config("storm-tiny", morphology="vit", image_size=32, vit_patch=8, vit_dim=32, vit_depth=1)
    net = StormNetwork(vit, N_GENES)
    net.losses(batch_factory(vit, N_GENES))["loss"].backward()
    assert _params_without_grad(net) == []

    feats = get_config("storm-tiny", morphology="features", feature_dim=24, features_key="X_uni")
    net = StormNetwork(feats, N_GENES)
    net.losses(batch_factory(feats, N_GENES, features=24))["loss"].backward()
    assert _params_without_grad(net) == []

    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    custom = get_config("storm-tiny", morphology="module", backbone_dim=4)
    net = StormNetwork(custom, N_GENES, backbone=backbone)
    assert net.encode_morphology(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, custom.hidden_dim)
    with pytest.raises(ValueError, match="pass the same torch module"):
        StormNetwork(custom, N_GENES)
    with pytest.raises(ValueError, match="morphology='module'"):
        StormNetwork(get_config("storm-tiny"), N_GENES, backbone=backbone)


def test_missing_optional_backbone_package_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm":
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    cfg = get_config("storm-tiny", morphology="timm:vit_small_patch16_224", backbone_dim=384)
    with pytest.raises(ImportError, match="pip install timm"):
        StormNetwork(cfg, N_GENES)


def test_stain_jitter_identity_and_range():
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(1, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    same = stain_jitter(imgs, torch.ones(4, 3), torch.zeros(4, 3))
    assert torch.allclose(same, imgs.float(), atol=0.01)
    darker = stain_jitter(imgs, torch.full((4, 3), 1.3), torch.full((4, 3), 0.05))
    assert darker.min() >= 0
    assert darker.max() <= 255
    assert darker.mean() < same.mean()  # more stain absorbs more light
    with pytest.raises(ValueError, match=r"\(n, 3, h, w\)"):
        stain_jitter(imgs[:, :2], torch.ones(4, 3), torch.zeros(4, 3))


def test_info_nce_and_gaussian_nll():
    x = torch.eye(6)
    aligned = info_nce(x, x, torch.tensor(math.log(20.0)))
    shuffled = info_nce(x, x.roll(1, 0), torch.tensor(math.log(20.0)))
    assert aligned < 0.1 < shuffled
    # gathered rows from other processes only add negatives
    more = info_nce(x[:3], x[:3], torch.tensor(1.0), a_all=x, b_all=x, offset=0)
    assert more > info_nce(x[:3], x[:3], torch.tensor(1.0))
    mean, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    target = torch.tensor([[0.0, 1.0, 100.0], [0.0, 1.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    expected = 0.5 * math.log(2 * math.pi) + 0.25  # (0 + 1) / 2 / 2
    assert math.isclose(float(gaussian_nll(mean, logvar, target, mask)), expected, rel_tol=1e-6)
    assert float(gaussian_nll(mean, logvar, target, torch.zeros_like(mask))) == 0.0


def test_info_nce_keeps_gathered_rows_in_the_graph_when_a_process_has_no_pair():
    # data-parallel training: the gathered rows' backward is a collective every process must join
    x = torch.randn(6, 4)
    a_all, b_all = x.clone().requires_grad_(), x.clone().requires_grad_()
    none_here = info_nce(x[:0], x[:0], torch.tensor(1.0), a_all=a_all, b_all=b_all, offset=0)
    assert float(none_here) == 0.0
    none_here.backward()
    assert a_all.grad is not None and b_all.grad is not None
    # one local pair still learns against the other processes' rows
    one_here = info_nce(x[:1], x[:1], torch.tensor(1.0), a_all=x, b_all=x, offset=0)
    assert float(one_here) > 0.0
    assert float(info_nce(x[:1], x[:1], torch.tensor(1.0))) == 0.0  # alone: nothing to tell it apart from


def test_losses_and_stain_jitter_stay_float32_under_mixed_precision():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(32, 16, generator=g), torch.randn(32, 16, generator=g)
    scale = torch.tensor(math.log(100.0))
    imgs = torch.randint(1, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=g)
    alpha, beta = torch.full((4, 3), 1.1), torch.full((4, 3), 0.02)
    exact_loss, exact_rgb = info_nce(a, b, scale), stain_jitter(imgs, alpha, beta)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_loss, mixed_rgb = info_nce(a, b, scale), stain_jitter(imgs, alpha, beta)
    assert mixed_loss.dtype == torch.float32 and mixed_rgb.dtype == torch.float32
    assert torch.allclose(mixed_loss, exact_loss, atol=1e-6)
    assert torch.allclose(mixed_rgb, exact_rgb, atol=1e-4)


def test_decoder_queries_any_gene_subset():
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES).eval()
    x = torch.randn(3, cfg.embed_dim)
    all_mean, all_lv = net.prediction_head(x, net.gene_embedding, torch.arange(N_GENES))
    sub = torch.tensor([4, 17, 33])
    mean, lv = net.prediction_head(x, net.gene_embedding, sub)
    assert torch.allclose(mean, all_mean[:, sub], atol=1e-6)
    assert torch.allclose(lv, all_lv[:, sub], atol=1e-6)
    per_row, _ = net.prediction_head(x, net.gene_embedding, sub.expand(3, -1))
    assert torch.allclose(per_row, mean, atol=1e-6)
    assert (all_mean >= 0).all()
    assert (all_lv <= cfg.logvar_max).all()
    assert (all_lv >= cfg.logvar_min).all()


def test_expression_encoder_ignores_padding_and_order(rng):
    cfg = get_config("storm-tiny")
    net = StormNetwork(cfg, N_GENES).eval()
    ids = torch.tensor([[3, 9, 12, 0, 0]])
    vals = torch.tensor([[1.0, 2.5, 0.0, 7.0, 3.0]])
    valid = torch.tensor([[True, True, True, False, False]])
    perm = torch.tensor([[12, 3, 9, 5, 1]])
    perm_vals = torch.tensor([[0.0, 1.0, 2.5, 9.0, 9.0]])
    with torch.no_grad():
        a = net.encode_expression(ids, vals, valid)
        b = net.encode_expression(perm, perm_vals, valid)
    assert torch.allclose(a, b, atol=1e-5)


def test_expression_gradients_do_not_depend_on_thread_scheduling():
    # With several CPU threads, the backward of `x[ids]` sums repeated ids' gradients in parallel, in any order: two
    # fits of one seed ended with weights up to 2.8e-3 apart (and a resumed run could not match its uninterrupted
    # twin). Embedding lookups sum them in a fixed order.
    from storm_sc.models import StormModel

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        network = StormModel("storm-tiny", [f"g{i}" for i in range(3_000)], seed=0).network
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 3_000, (1_000, 200), generator=g)
        values, valid = torch.rand(1_000, 200, generator=g), torch.ones(1_000, 200, dtype=torch.bool)
        head = network.prediction_head
        x = torch.randn(1_000, head.state[0].normalized_shape[0], generator=g)
        grads = []
        for _ in range(4):
            network.zero_grad()
            state = network.expression(ids, values, valid)
            mean, logvar = head(x, network.gene_embedding, ids)
            (state.sum() + mean.sum() + logvar.sum()).backward()
            grads.append([p.grad.clone() for p in network.parameters() if p.grad is not None])
        for other in grads[1:]:
            assert all(torch.equal(a, b) for a, b in zip(grads[0], other, strict=True))
    finally:
        torch.set_num_threads(before)
