"""GenD's feature losses (``--uniformity W``, ``--alignment W``) on the unit-length features of a batch.

Both are Wang & Isola's (ICML 2020, arXiv 2005.10242) measures of a representation on the unit sphere, used as
losses as GenD (arXiv 2508.06248) does: *uniformity* ``log mean_{i<j} exp(-t ||f_i - f_j||^2)`` (t = 2) is lower
when the batch's features spread over the sphere; *alignment*, made label-aware, ``mean ||f_i - f_j||^alpha``
(alpha = 2) over the pairs of the same class, is lower when a class's features gather. They apply to the
normalised head's features (``NormalisedClassifierOutput.features``); images whose loss weight is 0 (unreadable)
are left out, and a batch without a pair (or without two images of one class, for alignment) adds 0.
"""

from __future__ import annotations

CLIP = 1e-6  # the floor of uniformity's mean before the log: a batch of identical features gives log(1e-6)


def uniformity(f, t: float = 2.0):
    """``log mean_{i<j} exp(-t ||f_i - f_j||^2)`` of the rows of ``f`` (N, D); 0 for fewer than two rows."""
    import torch

    if f.shape[0] < 2:
        return f.new_zeros(())
    return torch.pdist(f, p=2).pow(2).mul(-t).exp().mean().clamp(min=CLIP).log()


def alignment(f, labels, alpha: float = 2.0):
    """``mean ||f_i - f_j||^alpha`` over the pairs i < j with the same label; 0 when there is none."""
    import torch

    same = (labels[:, None] == labels[None, :]).triu(diagonal=1)
    i, j = torch.nonzero(same, as_tuple=True)
    if i.numel() == 0:
        return f.new_zeros(())
    return (f[i] - f[j]).norm(p=2, dim=1).pow(alpha).mean()


class FeatureLoss:
    """``uniformity_w * uniformity + alignment_w * alignment`` of a (micro-)batch's features, the rows whose
    loss weight is 0 left out."""

    def __init__(self, uniformity_w: float, alignment_w: float):
        self.uniformity_w, self.alignment_w = float(uniformity_w), float(alignment_w)

    def __bool__(self) -> bool:
        return self.uniformity_w > 0 or self.alignment_w > 0

    def __call__(self, features, target, weight):
        keep = weight > 0
        f, y = features[keep].float(), target[keep]
        total = features.new_zeros((), dtype=f.dtype)
        if self.uniformity_w > 0:
            total = total + self.uniformity_w * uniformity(f)
        if self.alignment_w > 0:
            total = total + self.alignment_w * alignment(f, y)
        return total
