"""Obviously-correct reference implementations: one example at a time, plain ``torch.autograd``, no torch.func.

These are the definitions of the quantities; the package's fast versions are tested against them in float64.
They deliberately share no code with ``lightning_sensitivity``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

ACTIVATION_MODULES = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.PReLU)


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


def _out(logits: torch.Tensor, output: str) -> torch.Tensor:
    if output == "sigmoid":
        return 1.0 / (1.0 + torch.exp(-logits))
    return {"softmax": logits.softmax(-1), "log_softmax": logits.log_softmax(-1), "logits": logits}[output]


def _own(model_kwargs, i: int) -> dict:
    """Example ``i``'s keyword inputs, as a batch of one."""
    return {k: v[i : i + 1] for k, v in (model_kwargs or {}).items()}


def jacobian_norm_loop(
    model: nn.Module, inputs: torch.Tensor, output: str = "softmax", model_kwargs=None
) -> torch.Tensor:
    net = _eval_copy(model)
    norms = []
    for i, x in enumerate(inputs):
        kw = _own(model_kwargs, i)
        jac = torch.autograd.functional.jacobian(lambda z, kw=kw: _out(net(z.unsqueeze(0), **kw), output)[0], x)
        norms.append(torch.sqrt((jac**2).sum()))
    return torch.stack(norms)


def predict_loop(model: nn.Module, inputs: torch.Tensor, model_kwargs=None) -> torch.Tensor:
    net = _eval_copy(model)
    with torch.no_grad():
        return torch.cat([net(inputs[i : i + 1], **_own(model_kwargs, i)) for i in range(inputs.shape[0])])


def activation_pattern(model: nn.Module, x: torch.Tensor, kwargs=None, prediction: str = "argmax") -> tuple:
    """Binary pattern (pre-activation > 0) of every activation module, recorded with forward hooks, and the class."""
    net = _eval_copy(model)
    recorded = []
    hooks = [
        m.register_forward_hook(lambda mod, args, out: recorded.append((args[0] > 0).flatten()))
        for m in net.modules()
        if isinstance(m, ACTIVATION_MODULES)
    ]
    with torch.no_grad():
        out = net(x.unsqueeze(0), **(kwargs or {}))
        # "labels": the set of outputs above 0 (multi-label heads, a single binary logit)
        pred = int(out.argmax(dim=1)) if prediction == "argmax" else tuple((out[0] > 0).tolist())
    for h in hooks:
        h.remove()
    return (torch.cat(recorded) if recorded else torch.zeros(0, dtype=torch.bool)), pred


def transitions_loop(
    model: nn.Module, trajectories: torch.Tensor, model_kwargs=None, prediction: str = "argmax"
) -> dict[str, list[int]]:
    """``model_kwargs`` values have one entry per trajectory, shared by all its points."""
    """``segments[t][k]``: Hamming distance from point k to point k + 1 (the last segment closes the loop);
    ``segment_prediction[t][k]``: whether the prediction changes along it."""
    out: dict[str, list] = {"activation": [], "region_changes": [], "prediction": [], "segments": [],
                            "segment_prediction": []}  # fmt: skip
    for t, traj in enumerate(trajectories):
        seq = [activation_pattern(model, x, _own(model_kwargs, t), prediction) for x in traj]
        act = reg = pred = 0
        segs, seg_pred = [], []
        for k in range(len(seq)):
            (a, pa), (b, pb) = seq[k], seq[(k + 1) % len(seq)]  # closed: the last point meets the first
            hamming = int((a != b).sum())
            act += hamming
            reg += int(hamming > 0)
            pred += int(pa != pb)
            segs.append(hamming)
            seg_pred.append(bool(pa != pb))
        out["activation"].append(act)
        out["region_changes"].append(reg)
        out["prediction"].append(pred)
        out["segments"].append(segs)
        out["segment_prediction"].append(seg_pred)
    return out


def near_anchor_ratio_loop(segments: list[list[float]], half_width: float) -> float:
    """Density of counts on segments whose midpoint lies within ``half_width`` of the period of an anchor (at 0,
    1/3, 2/3 of the period) over the density on the others, pooled over trajectories."""
    near_sum = near_n = far_sum = far_n = 0.0
    for row in segments:
        p = len(row)
        for k, value in enumerate(row):
            mid = (k + 0.5) / p
            gaps = []
            for anchor in (0.0, 1.0 / 3.0, 2.0 / 3.0):
                d = abs(mid - anchor)
                gaps.append(min(d, 1.0 - d))
            if min(gaps) <= half_width:
                near_sum, near_n = near_sum + value, near_n + 1
            else:
                far_sum, far_n = far_sum + value, far_n + 1
    far = far_sum / far_n
    return math.nan if far == 0 else (near_sum / near_n) / far


def per_example_gradients_loop(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn, model_kwargs=None
) -> list:
    net = _eval_copy(model)
    params = [p for p in net.parameters() if p.requires_grad]
    grads = []
    for i in range(inputs.shape[0]):
        loss = loss_fn(net(inputs[i : i + 1], **_own(model_kwargs, i)), targets[i : i + 1]).sum()
        grads.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    return grads


def gram_loop(
    model, inputs, targets, inputs2=None, targets2=None, loss_fn=None, model_kwargs=None, model_kwargs2=None
) -> torch.Tensor:
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    g1 = per_example_gradients_loop(model, inputs, targets, loss_fn, model_kwargs)
    g2 = g1 if inputs2 is None else per_example_gradients_loop(model, inputs2, targets2, loss_fn, model_kwargs2)
    return torch.tensor([[float(a @ b) for b in g2] for a in g1], dtype=torch.float64)


def stiffness_loop(
    model, inputs, targets, inputs2=None, targets2=None, loss_fn=None, model_kwargs=None, model_kwargs2=None
) -> dict:
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    g1 = per_example_gradients_loop(model, inputs, targets, loss_fn, model_kwargs)
    g2 = g1 if inputs2 is None else per_example_gradients_loop(model, inputs2, targets2, loss_fn, model_kwargs2)
    sign = [[0.0] * len(g2) for _ in g1]
    cos = [[0.0] * len(g2) for _ in g1]
    off_sign, off_cos = [], []
    for i, a in enumerate(g1):
        for j, b in enumerate(g2):
            dot = float(a @ b)
            sign[i][j] = float((dot > 0) - (dot < 0))
            cos[i][j] = dot / (float(a.norm()) * float(b.norm()))
            if inputs2 is not None or i != j:
                off_sign.append(sign[i][j])
                off_cos.append(cos[i][j])
    return {
        "sign": torch.tensor(sign, dtype=torch.float64),
        "cosine": torch.tensor(cos, dtype=torch.float64),
        "sign_mean": sum(off_sign) / len(off_sign),
        "cosine_mean": sum(off_cos) / len(off_cos),
    }


def class_mean_loop(matrix, labels, labels2=None, num_classes=None, exclude_self=True) -> list[list[float]]:
    same = labels2 is None
    labels2 = labels if same else labels2
    sums = [[0.0] * num_classes for _ in range(num_classes)]
    counts = [[0] * num_classes for _ in range(num_classes)]
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if same and exclude_self and i == j:
                continue
            a, b = int(labels[i]), int(labels2[j])
            sums[a][b] += float(matrix[i, j])
            counts[a][b] += 1
    classes = range(num_classes)
    return [[sums[a][b] / counts[a][b] if counts[a][b] else math.nan for b in classes] for a in classes]


def by_distance_loop(matrix, inputs, inputs2=None, num_bins=20, distance="cosine"):
    same = inputs2 is None
    rows = [x.reshape(-1).double() for x in inputs]
    cols = rows if same else [x.reshape(-1).double() for x in inputs2]
    pairs = []
    for i, a in enumerate(rows):
        for j, b in enumerate(cols):
            if same and i == j:
                continue
            if distance == "cosine":
                d = 1.0 - float(a @ b) / (float(a.norm()) * float(b.norm()))
            else:
                d = float((a - b).norm())
            pairs.append((d, float(matrix[i, j])))
    upper = 2.0 if distance == "cosine" else max(d for d, _ in pairs)
    width = upper / num_bins
    sums, counts = [0.0] * num_bins, [0] * num_bins
    for d, v in pairs:
        k = min(max(int(d // width), 0), num_bins - 1)
        sums[k] += v
        counts[k] += 1
    means = [s / c if c else math.nan for s, c in zip(sums, counts, strict=True)]
    return means, counts


def first_crossing_loop(centers, values) -> float:
    """The critical length by first crossing: the first bin centre whose value is <= 0 (NaN bins skipped),
    interpolated linearly from the last positive bin before it; NaN when the values never reach zero."""
    last = None
    for c, v in zip(centers, values, strict=True):
        if math.isnan(v):
            continue
        if v <= 0:
            return c if last is None else last[0] + (c - last[0]) * last[1] / (last[1] - v)
        last = (c, v)
    return math.nan


def weighted_fit_zero(x, y, counts=None) -> float:
    """The critical length by linear fit: numpy's weighted least squares (weights sqrt(counts) on the residuals)
    over the finite bins with a count, and the line's zero; NaN for a rising line, fewer than 2 bins or a zero
    outside the bins used (an extrapolation: no crossing)."""
    import numpy as np

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.ones_like(x) if counts is None else np.asarray(counts, dtype=float)
    keep = np.isfinite(y) & (w > 0)
    if keep.sum() < 2:
        return math.nan
    slope, intercept = np.polyfit(x[keep], y[keep], 1, w=np.sqrt(w[keep]))
    zero = -intercept / slope if slope < 0 else math.nan
    return zero if x[keep].min() <= zero <= x[keep].max() else math.nan


def embedding_jacobian_norm_loop(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, output: str = "softmax"
) -> torch.Tensor:
    """Per-example Frobenius norm of d output / d embedded sequence, one example at a time, in float64.

    ``model`` has ``embed(ids) -> [N, T, d]`` and ``forward_embedded(embedded, attention_mask) -> logits``.
    """
    net = _eval_copy(model).double()
    norms = []
    for ids, mask in zip(input_ids, attention_mask, strict=True):
        embedded = net.embed(ids.unsqueeze(0)).detach()[0]
        jac = torch.autograd.functional.jacobian(
            lambda e, mask=mask: _out(net.forward_embedded(e.unsqueeze(0), mask.unsqueeze(0)), output)[0], embedded
        )
        norms.append(torch.sqrt((jac**2).sum()))
    return torch.stack(norms)


def per_layer_gram_loop(model, inputs, targets, layer_of, inputs2=None, targets2=None, loss_fn=None) -> dict:
    """``{layer: [N, M]}`` from one example at a time: per-parameter gradients, dotted within each layer.

    ``layer_of(parameter name) -> layer name`` says which layer a trainable parameter belongs to.
    """
    loss_fn = loss_fn or torch.nn.functional.cross_entropy
    net = _eval_copy(model)
    named = [(name, p) for name, p in net.named_parameters() if p.requires_grad]

    def grads(xs, ys):
        rows = []
        for x, y in zip(xs, ys, strict=True):
            loss = loss_fn(net(x.unsqueeze(0)), y.unsqueeze(0))
            rows.append(dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named]), strict=True)))
        return rows

    g1 = grads(inputs, targets)
    g2 = g1 if inputs2 is None else grads(inputs2, targets2)
    out = {}
    for name, _ in named:
        layer = layer_of(name)
        block = torch.tensor([[float((a[name] * b[name]).sum()) for b in g2] for a in g1], dtype=torch.float64)
        out[layer] = out[layer] + block if layer in out else block
    return out
