"""Ranking and calibration metrics over whole arrays (numpy only)."""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic; tied scores share their mean rank.

    Returns NaN when the labels hold only one class, where AUC is undefined.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} differ in shape")
    num_pos = int(labels.sum())
    num_neg = labels.size - num_pos
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Mean 1-based rank of each run of equal scores.
    run_starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    run_ends = np.r_[run_starts[1:], sorted_scores.size]
    run_rank = (run_starts + run_ends + 1) / 2.0
    run_of = np.repeat(np.arange(run_starts.size), run_ends - run_starts)
    pos_rank_sum = run_rank[run_of][labels[order]].sum()
    return float((pos_rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels."""
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if labels.shape != p.shape:
        raise ValueError(f"labels {labels.shape} and probabilities {p.shape} differ in shape")
    if labels.size == 0:
        return float("nan")
    return float(-np.mean(labels * np.log(p) + (1.0 - labels) * np.log1p(-p)))
