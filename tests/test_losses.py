"""Each loss against a value computed by hand."""

import math

import pytest
import torch

from raytt.losses.ar_cosine import ar_cosine, mix
from raytt.losses.infonce import info_nce, reverse_info_nce
from raytt.losses.objective import Batch, LossConfig, in_batch_accuracy, objective
from raytt.losses.triplet import hardest_in_batch, triplet_margin

Q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
C = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])


def test_info_nce_hand_value_with_offset():
    # query 0 -> candidate 1 (offset 1), query 1 -> candidate 2; tau = 0.5
    loss = info_nce(Q, C, torch.tensor([10, 11, 12]), torch.tensor([11, 12]), offset=1, tau=0.5)
    l0 = -(0.6 / 0.5) + math.log(math.exp(1 / 0.5) + math.exp(0.6 / 0.5) + math.exp(0))
    l1 = -(1 / 0.5) + math.log(math.exp(0) + math.exp(0.8 / 0.5) + math.exp(1 / 0.5))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_masks_candidates_sharing_the_target_key():
    # candidate 0 carries query 0's target key (11): it must not count as a negative for query 0
    loss = info_nce(Q, C, torch.tensor([11, 11, 12]), torch.tensor([11, 12]), offset=1, tau=1.0)
    l0 = -0.6 + math.log(math.exp(0.6) + math.exp(0.0))
    l1 = -1.0 + math.log(math.exp(0.0) + math.exp(0.8) + math.exp(1.0))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)


def test_info_nce_mined_negatives_join_the_denominator_and_empty_slots_do_not():
    q, c = Q[:1], torch.tensor([[1.0, 0.0]])
    mined = torch.tensor([[[0.0, 1.0], [0.6, 0.8], [1.0, 0.0]]])
    loss = info_nce(q, c, torch.tensor([5]), torch.tensor([5]), 0, 1.0, mined, torch.tensor([[7, -1, 5]]))
    expected = -1.0 + math.log(math.exp(1.0) + math.exp(0.0))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_triplet_margin_on_cosine_distance():
    q = torch.tensor([[1.0, 0.0]])
    pos = torch.tensor([[0.6, 0.8]])  # d = 0.4
    neg = torch.tensor([[[0.8, 0.6], [0.0, 1.0]]])  # d = 0.2 and 1.0
    loss = triplet_margin(q, pos, neg, margin=0.3)
    assert loss.item() == pytest.approx((max(0, 0.4 - 0.2 + 0.3) + max(0, 0.4 - 1.0 + 0.3)) / 2)


def test_hardest_in_batch_skips_the_positive_key():
    hard = hardest_in_batch(Q, C, torch.tensor([1, 2, 3]), torch.tensor([1, 3]))
    assert torch.equal(hard[:, 0], torch.stack([C[1], C[1]]))


def test_ar_cosine_and_mix():
    t = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    assert ar_cosine(Q, t).item() == pytest.approx(((1 - 0.6) + (1 - 1.0)) / 2)
    assert mix(torch.tensor(2.0), torch.tensor(1.0), 0.25).item() == pytest.approx(0.25 * 2 + 0.75 * 1)


def test_objective_ar_mix_is_the_weighted_sum():
    batch = Batch(Q, C[1:], torch.tensor([11, 12]), C, torch.tensor([10, 11, 12]), 1)
    cfg = LossConfig(kind="ar_mix", tau=0.5, lambda_con=0.3)
    con = objective(LossConfig(kind="infonce", tau=0.5), batch)
    assert objective(cfg, batch).item() == pytest.approx(0.3 * con.item() + 0.7 * ar_cosine(Q, C[1:]).item())


def test_reverse_info_nce_hand_value_and_shared_targets():
    # positive 0 = (0.6, 0.8) picks query 0 among queries (1, 0) and (0, 1); positive 1 = (0, 1) picks query 1
    p = C[1:]
    l0 = -(0.6 / 0.5) + math.log(math.exp(0.6 / 0.5) + math.exp(0.8 / 0.5))
    l1 = -(1 / 0.5) + math.log(math.exp(0) + math.exp(1 / 0.5))
    assert reverse_info_nce(Q, p, torch.tensor([11, 12]), 0.5).item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    same = reverse_info_nce(Q, p, torch.tensor([11, 11]), 0.5)  # one chunk twice: nothing left to confuse
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_objective_symmetric_averages_both_directions():
    batch = Batch(Q, C[1:], torch.tensor([11, 12]), C, torch.tensor([10, 11, 12]), 1)
    forward = objective(LossConfig(tau=0.5), batch)
    both = objective(LossConfig(tau=0.5, symmetric=True), batch)
    reverse = reverse_info_nce(Q, C[1:], torch.tensor([11, 12]), 0.5)
    assert both.item() == pytest.approx((forward.item() + reverse.item()) / 2)


def test_in_batch_accuracy():
    batch = Batch(Q, C[1:], torch.tensor([11, 12]), C, torch.tensor([10, 11, 12]), 1)
    # query 0: own 0.6 < candidate 0 (1.0) -> miss; query 1: own 1.0 beats 0.8 and 0 -> hit
    assert in_batch_accuracy(batch) == 0.5


@pytest.mark.parametrize("bad", [{"tau": 0.0}, {"lambda_con": 1.5}, {"margin": -1.0}])
def test_loss_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        LossConfig(**bad)
