"""CLIP_benchmark's metric formulas written out in numpy from their definitions (the independent reference).

Ties: a stable descending sort puts the lower index first, the rule vlscale.eval documents.
"""

import numpy as np


def classification(logits: np.ndarray, target: np.ndarray) -> dict:
    """zeroshot_classification.evaluate: accuracy(topk=(1, 5)) and balanced_accuracy_score of argmax."""
    n = len(target)
    top = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    correct = top == target[:, None]
    pred = logits.argmax(axis=1)
    classes = np.unique(target)
    confusion = np.zeros((logits.shape[1], logits.shape[1]))
    np.add.at(confusion, (target, pred), 1)
    per_class = np.diag(confusion)[classes] / confusion.sum(axis=1)[classes]
    return {"acc1": correct[:, :1].sum() / n, "acc5": correct[:, :5].sum() / n,
            "mean_per_class_recall": per_class.mean()}


def zeroshot_classifier(text_features_by_class: np.ndarray) -> np.ndarray:
    """[C, T, E] raw text features -> [E, C]: normalise, mean over templates, renormalise."""
    f = text_features_by_class / np.linalg.norm(text_features_by_class, axis=-1, keepdims=True)
    m = f.mean(axis=1)
    return (m / np.linalg.norm(m, axis=-1, keepdims=True)).T


def retrieval(image_features: np.ndarray, text_features: np.ndarray, text_image: np.ndarray, ks=(1, 5, 10)) -> dict:
    """zeroshot_retrieval.evaluate: scores = texts @ images.T, recall_at_k > 0 averaged over queries."""
    scores = text_features @ image_features.T
    positive = np.zeros(scores.shape, bool)
    positive[np.arange(len(text_image)), text_image] = True

    def recall_at_k(s, pos, k):
        topk = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(pos, topk, axis=1).sum(axis=1) / pos.sum(axis=1)

    out = {}
    for k in ks:
        out[f"image_retrieval_recall@{k}"] = float((recall_at_k(scores, positive, k) > 0).mean())
        out[f"text_retrieval_recall@{k}"] = float((recall_at_k(scores.T, positive.T, k) > 0).mean())
    return out
