"""Multi-label losses as pure functions on logits ``(batch, n_tags)`` and 0/1 targets of the same shape.

``bce`` and ``weighted_bce`` are the seeds' losses (seed 10 weighs positives by a constant ``pos_weight``),
``bce_kl`` adds seed 000's KL divergence between the normalised label distribution and the softmax over tags, and
``asymmetric`` is the asymmetric loss of Ridnik et al. (ICCV 2021), which focuses away easy negatives — the
imbalance of a large vocabulary where each photo has a handful of positive tags.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

#: Names accepted by :func:`make_loss`.
LOSSES = ("bce", "weighted_bce", "bce_kl", "asymmetric")


def bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy over all image × tag entries."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def weighted_bce(logits: torch.Tensor, targets: torch.Tensor, pos_weight: float | torch.Tensor = 10.0) -> torch.Tensor:
    """Binary cross-entropy with positives weighted by ``pos_weight`` (a number or ``(n_tags,)``)."""
    weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)


def label_kl(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over images of KL(p || softmax(logits)), p = the image's tags as a uniform distribution.

    Images without any tag contribute nothing.
    """
    counts = targets.sum(dim=1, keepdim=True)
    has_tags = counts.squeeze(1) > 0
    if not bool(has_tags.any()):
        return logits.sum() * 0.0
    p = targets[has_tags] / counts[has_tags]
    log_q = F.log_softmax(logits[has_tags].float(), dim=1)
    # 0 · log 0 = 0: only positive entries of p contribute.
    log_p = torch.where(p > 0, torch.log(p.clamp_min(1e-12)), torch.zeros_like(p))
    return (p * (log_p - log_q)).sum(dim=1).mean()


def bce_kl(logits: torch.Tensor, targets: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
    """Seed 000's loss: binary cross-entropy plus ``kl_weight`` × :func:`label_kl`."""
    return bce(logits, targets) + kl_weight * label_kl(logits, targets)


def asymmetric(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Asymmetric loss (Ridnik et al. 2021), summed over tags and averaged over images.

    Negatives are down-weighted by ``p_m ** gamma_neg`` where ``p_m = max(p - clip, 0)`` (very easy negatives, and
    possibly mislabelled ones with ``p < clip``, give no gradient); positives by ``(1 - p) ** gamma_pos``.
    """
    p = torch.sigmoid(logits.float())
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p
    loss_pos = targets * torch.log(p.clamp(min=eps)) * (1 - p) ** gamma_pos
    loss_neg = (1 - targets) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg**gamma_neg
    return -(loss_pos + loss_neg).sum(dim=1).mean()


def make_loss(
    name: str,
    *,
    pos_weight: float | torch.Tensor = 10.0,
    kl_weight: float = 1.0,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``name`` (one of :data:`LOSSES`) with its settings bound: ``loss(logits, targets) -> scalar``.

    Example:
        >>> loss = make_loss("weighted_bce", pos_weight=10.0)
        >>> round(float(loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]))), 4)  # (10 + 1) * log 2 / 2
        3.8123
    """
    if name == "bce":
        return bce
    if name == "weighted_bce":
        return lambda logits, targets: weighted_bce(logits, targets, pos_weight)
    if name == "bce_kl":
        return lambda logits, targets: bce_kl(logits, targets, kl_weight)
    if name == "asymmetric":
        return lambda logits, targets: asymmetric(logits, targets, gamma_neg, gamma_pos, clip)
    raise ValueError(f"Unknown loss '{name}'. Valid losses: {', '.join(LOSSES)}.")
