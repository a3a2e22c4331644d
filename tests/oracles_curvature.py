"""Dense curvature references for the sharpness tests: plain ``torch.autograd``, one example at a time, no torch.func.

Like ``tests/oracles.py`` these share no code with ``lightning_sensitivity``. The loss is the mean over the examples
of each example's own loss (a batch of one), differentiated with respect to all trainable parameters, flattened in
``named_parameters`` order, on an eval-mode float64 copy of the model.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def _net(model: nn.Module) -> tuple[nn.Module, list[torch.Tensor]]:
    net = copy.deepcopy(model).double().eval()
    return net, [p for p in net.parameters() if p.requires_grad]


def dense_hessian_loop(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn) -> torch.Tensor:
    """``[P, P]`` Hessian of the mean loss: the gradient with its graph, then one backward pass per entry."""
    net, params = _net(model)
    x = inputs.double() if inputs.is_floating_point() else inputs
    loss = sum(loss_fn(net(x[i : i + 1]), targets[i : i + 1]).sum() for i in range(x.shape[0])) / x.shape[0]
    grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=True)])
    rows = []
    for p in range(grad.numel()):
        row = torch.autograd.grad(grad[p], params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([torch.zeros(q.numel(), dtype=q.dtype) if r is None else r.reshape(-1)
                               for r, q in zip(row, params, strict=True)]))  # fmt: skip
    return torch.stack(rows)


def gauss_newton_loop(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn) -> torch.Tensor:
    """``[P, P]`` generalised Gauss-Newton matrix ``mean_i J_i^T (d^2 loss_i / dz^2) J_i``."""
    net, params = _net(model)
    x = inputs.double() if inputs.is_floating_point() else inputs
    total = None
    for i in range(x.shape[0]):
        z = net(x[i : i + 1])[0]
        jac = torch.stack([
            torch.cat([g.reshape(-1) for g in torch.autograd.grad(z[c], params, retain_graph=True)])
            for c in range(z.shape[0])
        ])  # fmt: skip
        y = targets[i : i + 1]
        h = torch.autograd.functional.hessian(lambda zz, y=y: loss_fn(zz.unsqueeze(0), y).sum(), z.detach())
        term = jac.T @ h @ jac
        total = term if total is None else total + term
    return total / x.shape[0]
