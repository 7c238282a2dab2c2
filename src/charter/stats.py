"""Small statistics shared by the supervisor and the evals."""
from __future__ import annotations


def fit_logistic(x, labels, weight_decay=0.1, weights=None):
    """L2-regularised logistic regression on standardised features: (mean, std, weights, bias).

    `x` is an (n, d) tensor or nested list; `labels` may be soft (probabilities). `weights` (one per row)
    lets small but important groups, such as lookalikes, count as much as large ones. Predict with
    sigmoid(((x - mean) / std) @ weights + bias)."""
    import torch

    x = torch.as_tensor(x, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.float32)
    sw = torch.ones(len(y)) if weights is None else torch.tensor(weights, dtype=torch.float32)
    sw = sw / sw.mean()
    mu, sd = x.mean(0), (x.std(0) if len(x) > 1 else torch.zeros(x.shape[1])) + 1e-6
    xn = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(xn @ w + b, y, weight=sw)
                + weight_decay * (w * w).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return mu, sd, w.detach(), b.detach()
