"""The losses of Sec. 3.2 (Eq. 1-5, branch training) and Sec. 3.3 (Eq. 11, fusion training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pair_views(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch arranged as pairs (2k, 2k+1) by PairBatchSampler -> (a, b) halves."""
    if x.shape[0] % 2:
        raise ValueError(f"a pair batch needs an even size, got {x.shape[0]}")
    return x[0::2], x[1::2]


def contrastive_loss(va: torch.Tensor, vb: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Eq. 3 and 4, averaged over pairs.

    same class:      ||V_a - V_b||_2^2                   (Eq. 3)
    different class: max(0, mu - ||V_a - V_b||_2^2)      (Eq. 4), mu = 1 in Sec. 4.1
    Note the margin applies to the *squared* distance, as printed.
    """
    d2 = (va.float() - vb.float()).pow(2).sum(dim=1)
    same = same.to(d2.dtype)
    return (same * d2 + (1 - same) * F.relu(margin - d2)).mean()


def multitask_loss(
    logits: torch.Tensor,
    features: torch.Tensor,
    targets: torch.Tensor,
    margin: float = 1.0,
    contrastive_weight: float = 1.0,
    normalize: bool = False,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 5 for a batch of pairs: L = L_cls(V_a) + L_cls(V_b) + [l=1] L+ + [l=-1] L-, averaged over pairs.

    L_cls is the negative log-likelihood of the softmax of Eq. 1-2 (cross-entropy on the logits W V).
    `contrastive_weight` is 1 in the paper; 0 turns the contrastive objective off (an ablation, ours).
    `normalize` (ours) measures the distance between unit-length features: the paper's margin mu = 1 on a squared
    distance presumes some feature scale, and on raw ReLU features the unbounded Eq. 3 term can dwarf the
    classification loss and collapse the features (we saw chance-level training on the CPU profile).
    """
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    ce_a, ce_b = pair_views(ce)
    va, vb = pair_views(F.normalize(features.float(), dim=1) if normalize else features)
    ya, yb = pair_views(targets)
    cls = (ce_a + ce_b).mean()
    con = contrastive_loss(va, vb, ya == yb, margin)
    total = cls + contrastive_weight * con
    return total, {"cls": float(cls.detach()), "contrastive": float(con.detach())}


def l2_norm(weights: list[torch.Tensor]) -> torch.Tensor:
    """||theta||_2 over all given weight matrices, flattened into one vector."""
    return torch.sqrt(sum((w.float() ** 2).sum() for w in weights))


def fusion_loss(
    logits: torch.Tensor, targets: torch.Tensor, weights: list[torch.Tensor], lam: float = 0.5, squared: bool = False
) -> tuple[torch.Tensor, dict[str, float]]:
    """Eq. 11: L = L_cls(H) + lambda * ||theta||_2, theta the Bi-GRU's weight matrices, lambda = 0.5 (Sec. 4.1).

    Why a norm in the loss and not the optimiser's weight decay: Eq. 11 prints the L2 *norm*, not its square.
    The gradient of lambda*||theta|| is lambda * theta/||theta||, a pull of constant length lambda towards zero
    whatever the weights' size, whereas weight decay (lambda/2 ||theta||^2) pulls with lambda * theta. It also
    touches only the recurrent weights, not the classifier or the CNN. `squared=True` gives the weight-decay
    reading for comparison.
    """
    cls = F.cross_entropy(logits.float(), targets)
    if weights and lam:
        reg = l2_norm(weights)
        reg = reg**2 if squared else reg
    else:
        reg = logits.new_zeros((), dtype=torch.float32)
    total = cls + lam * reg
    return total, {"cls": float(cls.detach()), "reg": float(reg.detach())}
