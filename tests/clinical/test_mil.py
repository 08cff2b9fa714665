from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from storm_sc.clinical import GatedAttentionMIL, MeanPoolMIL, MILSettings, c_index, cox_loss, hazard_ratio_per_sd


@pytest.mark.parametrize("cls", [GatedAttentionMIL, MeanPoolMIL])
def test_padding_is_ignored_and_order_does_not_matter(cls):
    torch.manual_seed(0)
    net = cls(8, hidden_dim=16).eval()
    bag = torch.randn(1, 5, 8)
    score, att = net(bag, torch.ones(1, 5, dtype=torch.bool))
    padded = torch.cat([bag, torch.randn(1, 3, 8) * 100], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    score_p, att_p = net(padded, mask)
    torch.testing.assert_close(score, score_p)
    assert torch.all(att_p[0, 5:] == 0)
    assert torch.isclose(att_p.sum(), torch.tensor(1.0))
    perm = torch.randperm(5)
    score_perm, att_perm = net(bag[:, perm], torch.ones(1, 5, dtype=torch.bool))
    torch.testing.assert_close(score, score_perm)
    torch.testing.assert_close(att[0, perm], att_perm[0])


def test_gated_attention_can_single_out_one_tile():
    """A bag is positive iff it holds one 'marker' tile: attention pooling learns it, and attends to it."""
    rng = np.random.default_rng(0)
    bags, y = [], []
    for i in range(64):
        x = rng.normal(0, 1, (20, 4)).astype(np.float32)
        if i % 2:
            x[rng.integers(20), 0] += 6.0
        bags.append(x)
        y.append(i % 2)
    x = torch.from_numpy(np.stack(bags))
    mask = torch.ones(64, 20, dtype=torch.bool)
    target = torch.tensor(y, dtype=torch.float32)
    torch.manual_seed(0)
    net = GatedAttentionMIL(4, hidden_dim=16, dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        score, _ = net(x, mask)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(score, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    score, att = net(x, mask)
    assert ((score > 0).float() == target).float().mean() > 0.95
    marker = x[..., 0].argmax(dim=1)
    positives = target.bool()
    assert (att[positives].argmax(dim=1) == marker[positives]).float().mean() > 0.9


def test_cox_loss_equals_the_partial_likelihood_of_lifelines():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    n = 60
    xv = rng.normal(size=(n, 2))
    time = rng.exponential(np.exp(-xv @ np.array([0.8, -0.5])))
    event = rng.random(n) < 0.7
    df = pd.DataFrame({"a": xv[:, 0], "b": xv[:, 1], "time": time, "event": event.astype(int)})
    cph = CoxPHFitter().fit(df, duration_col="time", event_col="event")
    beta = cph.params_[["a", "b"]].to_numpy()
    risk = torch.tensor(xv @ beta)
    loss = cox_loss(risk, torch.tensor(time), torch.tensor(event))
    # No tied times: Breslow and lifelines' Efron agree; the loss is the mean negative log partial likelihood.
    assert float(loss) * event.sum() == pytest.approx(-cph.log_likelihood_, rel=1e-6)


def test_cox_loss_ties_and_no_events():
    t = torch.tensor([2.0, 2.0, 1.0])
    e = torch.tensor([True, True, False])
    r = torch.tensor([0.3, -0.2, 0.5])
    # Breslow: both tied events share the risk set of everyone with time >= 2.
    denom = torch.logsumexp(r[:2], 0)
    expected = -((r[0] - denom) + (r[1] - denom)) / 2
    torch.testing.assert_close(cox_loss(r, t, e), expected)
    assert float(cox_loss(r, t, torch.zeros(3, dtype=torch.bool))) == 0.0


def test_cox_loss_reads_integer_events_as_bool():
    r, t = torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])
    expected = cox_loss(r, t, torch.tensor([True, False]))
    for event in (torch.tensor([1, 0]), torch.tensor([1.0, 0.0])):
        torch.testing.assert_close(cox_loss(r, t, event), expected)
    with pytest.raises(ValueError, match=r"`event` must be bool or 0/1.*found \[2\]"):
        cox_loss(r, t, torch.tensor([2, 0]))


def test_c_index_matches_a_brute_force_count():
    rng = np.random.default_rng(1)
    t = rng.exponential(size=25)
    e = rng.random(25) < 0.6
    risk = rng.normal(size=25) - t
    conc = disc = ties = 0
    for i, j in itertools.permutations(range(25), 2):
        if e[i] and t[i] < t[j]:  # comparable: i had the event first
            if risk[i] > risk[j]:
                conc += 1
            elif risk[i] < risk[j]:
                disc += 1
            else:
                ties += 1
    assert c_index(t, e, risk) == pytest.approx((conc + 0.5 * ties) / (conc + disc + ties))
    assert c_index(t, e, risk) > 0.6


def test_hazard_ratio_per_sd_direction():
    rng = np.random.default_rng(2)
    risk = rng.normal(size=200)
    time = rng.exponential(np.exp(-0.7 * risk))
    hr = hazard_ratio_per_sd(time, np.ones(200, bool), risk)
    assert hr["hr_per_sd"] > 1.5
    assert hr["hr_ci_low"] > 1
    assert hr["hr_p"] < 1e-4
    assert np.isnan(hazard_ratio_per_sd(time, np.ones(200, bool), np.zeros(200))["hr_per_sd"])


def test_survival_metrics_accept_lists_and_series():
    rng = np.random.default_rng(3)
    risk = rng.normal(size=50)
    time = rng.exponential(np.exp(-risk))
    event = rng.random(50) < 0.7
    as_arrays = (c_index(time, event, risk), hazard_ratio_per_sd(time, event, risk))
    as_lists = (c_index(time.tolist(), event.astype(int).tolist(), risk.tolist()),
                hazard_ratio_per_sd(pd.Series(time), pd.Series(event.astype(int)), list(risk)))  # fmt: skip
    assert as_lists == as_arrays
    with pytest.raises(ValueError, match="one length"):
        c_index(time, event, risk[:-1])
    with pytest.raises(ValueError, match=r"`event` must be bool or 0/1.*\[0, 1, 2\]"):
        c_index(time, np.r_[event[:-1].astype(int), 2], risk)


def test_mil_settings_refuse_an_unknown_aggregator():
    with pytest.raises(ValueError, match=r"`aggregator` must be one of \('abmil', 'mean'\); got 'transformer'"):
        MILSettings(aggregator="transformer")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "`epochs` must be a positive integer"),
        ({"batch_size": True}, "`batch_size` must be a positive integer"),
        ({"max_tiles": 0}, "`max_tiles` must be a positive integer"),
        ({"dropout": 1.0}, r"`dropout` must be in \[0, 1\)"),
        ({"learning_rate": 0.0}, "`learning_rate` must be a positive number"),
        ({"weight_decay": float("nan")}, "`weight_decay` must be a number >= 0"),
    ],
)
def test_mil_settings_refuse_bad_values_before_any_fold_is_trained(changes, message):
    with pytest.raises(ValueError, match=message):
        MILSettings(**changes)
    MILSettings(max_tiles=None, epochs=np.int64(3))  # None (all tiles) and numpy integers are fine
