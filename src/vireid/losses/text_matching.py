"""Image-text matching losses of the IRRA family (text -> image and text -> RGB+T pair retrieval).

- :func:`similarity_distribution_matching` (SDM, IRRA ``objectives.compute_sdm``): KL between the softmax of
  scaled cosine similarities and the normalised same-identity label distribution, both directions.
- :func:`info_nce` (ITC, DCAlign): symmetric InfoNCE where row i of one side matches row i of the other,
  or, with ``labels=``, every row of the same label (multi-positive); ``symmetric=False`` gives the
  one-directional UITC.
- :func:`masked_token_cross_entropy` (MLM): cross-entropy over corrupted positions, ``ignore_index`` 0.

Identity labels are passed explicitly. In ITC without labels the positive of row i is row i of the other
side: both features come from the same batch row (a caption and the pair it describes), never from two
rows that merely sit at the same position; with labels, every row of the same identity is a positive too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vireid.losses._precision import at_least_float32


def similarity_distribution_matching(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor | None = None,
    temperature: float = 0.02,
    eps: float = 1e-8,
) -> torch.Tensor:
    """SDM = L_i2t + L_t2i (method-dikdnet.md 3).

    v and t are L2-normalised; S_ij = v_i . t_j / temperature (IRRA fixes 1/temperature = 50);
    y_ij = 1[label_i == label_j]; q_ij = y_ij / sum_k y_ik; p_ij = softmax_j(S_ij);
    L_i2t = mean_i sum_j p_ij (log p_ij - log(q_ij + eps)); L_t2i is the same on S transposed. Note the
    direction, KL(prediction || label distribution), as IRRA computes it.

    Shapes: ``image_features`` (B_i, d), ``text_features`` (B_t, d), labels (B_i,) and (B_t,)
    (``text_labels`` defaults to ``image_labels``). Returns a scalar.
    """
    if text_labels is None:
        text_labels = image_labels
    v = F.normalize(at_least_float32(image_features), dim=-1)
    t = F.normalize(at_least_float32(text_features), dim=-1)
    scores = v @ t.t() / temperature
    same = (image_labels.view(-1, 1) == text_labels.view(1, -1)).to(scores.dtype)

    def one_direction(logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        q = match / match.sum(dim=1, keepdim=True).clamp(min=1.0)
        log_p = F.log_softmax(logits, dim=1)
        return (log_p.exp() * (log_p - torch.log(q + eps))).sum(dim=1).mean()

    return one_direction(scores, same) + one_direction(scores.t(), same.t())


def info_nce(
    queries: torch.Tensor,
    keys: torch.Tensor,
    temperature: float = 0.07,
    symmetric: bool = True,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """InfoNCE between two (B, d) sets whose row i describe the same sample (ITC / UITC).

    S = cos(queries, keys) (B x B). Without ``labels`` the positive of row i is column i only:
    ITC = (CE(S / temperature, I) + CE(S^T / temperature, I)) / 2 (DCAlign's ``arange`` targets).

    With ``labels`` (B,) (row i of both sides carries label y_i) every column of the same label is a
    positive (multi-positive InfoNCE):

        L_q->k = mean_i -log sum_{j: y_j = y_i} softmax_j(S_i. / temperature),

    and the keys -> queries term is the same on S^T. Why: under the P x K identity sampler a batch holds
    several captions of one identity, and a caption is reused when its identity runs out of pairs, so two
    rows can be the same (caption, pair) or the same person. With ``arange`` targets those rows push each
    other away as negatives; with labels they are positives. ``labels=torch.arange(B)`` equals no labels.

    ``symmetric=False`` returns only the queries -> keys term (UITC). Nothing is detached here: pass
    ``keys.detach()`` for DCAlign's one-way TIR -> colour-free-text term. Returns a scalar.
    """
    q = F.normalize(at_least_float32(queries), dim=-1)
    k = F.normalize(at_least_float32(keys), dim=-1)
    logits = q @ k.t() / temperature
    if labels is None:
        target = torch.arange(logits.shape[0], device=logits.device)
        forward = F.cross_entropy(logits, target)
        if not symmetric:
            return forward
        return 0.5 * (forward + F.cross_entropy(logits.t(), target))
    if labels.shape != (logits.shape[0],) or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"labels {tuple(labels.shape)} must be (B,) for B x B similarities, got {tuple(logits.shape)}")
    positive = labels.view(-1, 1) == labels.view(1, -1)

    def one_direction(scores: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
        # -log sum_{positives} softmax = logsumexp(all) - logsumexp(positives); every row has itself.
        on_positives = scores.masked_fill(~match, float("-inf"))
        return (torch.logsumexp(scores, dim=1) - torch.logsumexp(on_positives, dim=1)).mean()

    forward = one_direction(logits, positive)
    if not symmetric:
        return forward
    return 0.5 * (forward + one_direction(logits.t(), positive.t()))


def masked_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 0) -> torch.Tensor:
    """Cross-entropy of (B, L, V) token logits against (B, L) labels, skipping ``ignore_index`` positions.

    Returns 0 (with a graph) when no position is labelled.
    """
    flat_logits = at_least_float32(logits).reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    if not bool((flat_labels != ignore_index).any()):
        return flat_logits.sum() * 0.0
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)
