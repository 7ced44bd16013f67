"""Eq. 3-5 (multi-task pair loss) and Eq. 11 (fusion loss) on hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from emotionlib.losses import contrastive_loss, fusion_loss, multitask_loss


def test_contrastive_same_pair_is_squared_distance():
    va, vb = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])
    assert contrastive_loss(va, vb, torch.tensor([True])).item() == pytest.approx(25.0)  # Eq. 3


@pytest.mark.parametrize("d2,expected", [(0.25, 0.75), (1.0, 0.0), (4.0, 0.0)])
def test_contrastive_different_pair_hinge_at_margin(d2, expected):
    va, vb = torch.zeros(1, 1), torch.tensor([[math.sqrt(d2)]])
    # Eq. 4 with mu = 1: a pair exactly at the margin costs nothing
    assert contrastive_loss(va, vb, torch.tensor([False]), margin=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_at_margin_has_zero_gradient():
    vb = torch.tensor([[1.0]], requires_grad=True)
    contrastive_loss(torch.zeros(1, 1), vb, torch.tensor([False])).backward()
    assert vb.grad.abs().item() == 0.0


def test_multitask_loss_eq5_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 3.0]])
    targets = torch.tensor([0, 0, 1, 0])  # pair 1 same class, pair 2 different
    feats = torch.tensor([[0.0], [0.5], [0.0], [0.3]])
    ce = [
        -math.log(math.exp(2) / (math.exp(2) + 1)),
        -math.log(1 / (1 + math.e)),
        math.log(2),
        -math.log(1 / (1 + math.exp(3))),
    ]
    pair1 = ce[0] + ce[1] + 0.25  # same: ||.||^2
    pair2 = ce[2] + ce[3] + (1 - 0.09)  # different: max(0, 1 - ||.||^2)
    total, parts = multitask_loss(logits, feats, targets, margin=1.0)
    assert total.item() == pytest.approx((pair1 + pair2) / 2, abs=1e-5)
    assert parts["contrastive"] == pytest.approx((0.25 + 0.91) / 2, abs=1e-6)


def test_fusion_loss_is_nll_plus_lambda_norm():
    logits = torch.tensor([[1.0, 0.0]])
    y = torch.tensor([0])
    w = [torch.tensor([[3.0]]), torch.tensor([[4.0]])]  # ||theta||_2 = 5
    total, parts = fusion_loss(logits, y, w, lam=0.5)
    assert total.item() == pytest.approx(F.cross_entropy(logits, y).item() + 2.5, abs=1e-6)
    assert parts["reg"] == pytest.approx(5.0)
    sq, _ = fusion_loss(logits, y, w, lam=0.5, squared=True)
    assert sq.item() == pytest.approx(F.cross_entropy(logits, y).item() + 12.5, abs=1e-5)


def test_norm_gradient_has_length_lambda_unlike_weight_decay():
    for scale in (0.1, 10.0):
        w = (torch.randn(4, 4) * scale).requires_grad_()
        total, _ = fusion_loss(torch.zeros(1, 2), torch.tensor([0]), [w], lam=0.5)
        total.backward()
        assert w.grad.norm().item() == pytest.approx(0.5, rel=1e-4)


def test_odd_batch_is_rejected():
    with pytest.raises(ValueError):
        multitask_loss(torch.zeros(3, 2), torch.zeros(3, 1), torch.zeros(3, dtype=torch.long))


def test_normalized_contrastive_uses_unit_length_features():
    logits = torch.zeros(2, 2)
    targets = torch.tensor([0, 1])  # a different-class pair
    feats = torch.tensor([[10.0, 0.0], [0.0, 0.5]])  # unit vectors e1, e2: squared distance 2 > mu
    _, raw = multitask_loss(logits, feats, targets, margin=1.0)
    _, unit = multitask_loss(logits, feats, targets, margin=1.0, normalize=True)
    assert raw["contrastive"] == pytest.approx(0.0)  # ||(10,-0.5)||^2 = 100.25 > 1
    assert unit["contrastive"] == pytest.approx(0.0)
    same = torch.tensor([0, 0])
    _, raw = multitask_loss(logits, feats, same)
    _, unit = multitask_loss(logits, feats, same, normalize=True)
    assert raw["contrastive"] == pytest.approx(100.25) and unit["contrastive"] == pytest.approx(2.0)
