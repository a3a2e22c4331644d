"""Which torch functions the layerwise engine recognises when they receive a trainable parameter, and what each records.

Recognition happens at the operator level with a :class:`~torch.overrides.TorchFunctionMode`. Recognised uses of a
trainable parameter: ``F.linear``, ``x @ W`` / ``mm`` / ``addmm(b, x, W)`` (a linear layer without the transpose),
``F.conv1d``, ``F.conv2d`` (zero padding, any stride/dilation/groups), ``F.batch_norm`` (running statistics),
``F.layer_norm``, ``F.group_norm``, ``F.rms_norm``, ``F.embedding`` (ids whose pairs are compared for equality, or
gradients scattered into the vocabulary; ids shared by the batch, ``(T,)`` or ``(1, T)``, once the output is
broadcast), ``F.multi_head_attention_forward`` (rebuilt from the above by :mod:`.attention`), and an elementwise
``x + P``, ``x * P`` or ``P.expand(...)`` that broadcasts the parameter over the batch (positional embeddings,
layer scales, class tokens). An op whose tensor arguments are all parameters or constants (buffers, frozen
parameters) makes a :class:`Derived` tensor (``gamma.reshape``, ``W.T``, ``A @ B``, weight norm), which the ops
above consume like a parameter. Any other use (a recurrent cell, ``einsum``) marks the parameter *unrecognised*
with the reason, and the forward goes on: the caller gives it explicit per-example gradients. Parameter-free ops
(``F.scaled_dot_product_attention``, ``torch.cat``, activations) pass through untouched; batch statistics raise
:class:`LayerwiseUnsupported` (the examples interact).

Each recognised call adds a zero to its output and records a :class:`Call`: the op's input (or what its parameter
gradient needs) and that zero, whose gradient is the output gradient ``delta``; :mod:`.layerwise_factors` turns the
pair into Gram factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

from lightning_sensitivity.functional.gram.attention import (
    AttentionUnsupported,
    multi_head_attention,
)

_CONV = {F.conv1d: 1, F.conv2d: 2}
_NORMS = (F.batch_norm, F.layer_norm, F.group_norm) + ((F.rms_norm,) if hasattr(F, "rms_norm") else ())
# Elementwise uses of a parameter broadcast over the batch: ``x + P`` (positional embeddings), ``x * P`` (layer
# scales) and ``P.expand(n, ...)`` (class tokens, later concatenated).
_ADD = (torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__)
_MUL = (torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__)


class LayerwiseUnsupported(Exception):
    """The layerwise engine has no exact Gram for this model: examples interact, a failed check, a sharded model
    with a parameter the capture does not recognise."""


@dataclass
class Call:
    """One use of trainable parameters by a recognised op, with what its Gram contribution needs."""

    kind: str  # "linear" | "conv" | "norm" | "embedding" | "add" | "mul"
    weight: str | None  # trainable parameter names (None when absent or frozen)
    bias: str | None
    inputs: Tensor  # detached op input (normalised input for "norm", token ids for "embedding", other factor for "mul")
    leaf: Tensor  # zeros added to the op output; its gradient is delta
    options: dict = field(default_factory=dict)


@dataclass
class Derived:
    """A tensor computed from trainable parameters and constants only (no batch data): ``gamma.reshape(-1, 1, 1)``,
    ``W.T``, ``A @ B``, a weight-norm or spectral-norm weight. Recognised ops consume it like a parameter; its
    per-example gradients are pulled back to the parameters ``sources`` through the batch-free map that made it."""

    tensor: Tensor
    sources: frozenset[str]
    op: str
    # For a weight norm of two parameters: (v name, g name, v, g, dim), pulled back in closed form.
    weight_norm: tuple | None = None


# ``x @ W`` with a parameter (or derived tensor) ``W`` on the right: a linear layer without the transpose (LoRA
# adapters, hand-written heads); ``addmm(b, x, W)`` is transformers' ``Conv1D``.
_MATMUL = (torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.mm, Tensor.mm)
_ADDMM = (torch.addmm, Tensor.addmm)
# Ops that keep an embedding's values (a move, a cast, a view keeping the last dimension): the ids go along.
_KEEPS = (Tensor.to, Tensor.contiguous, Tensor.clone, Tensor.type_as, Tensor.float, Tensor.double, Tensor.half,
          Tensor.bfloat16, Tensor.unsqueeze, Tensor.view, Tensor.reshape, torch.unsqueeze, torch.reshape)  # fmt: skip
# Casts whose other tensor argument only gives a dtype or device: a parameter cast is still batch-free.
_CASTS = (Tensor.to, Tensor.type_as)
# Reads of tensor values into Python: the forward's path may depend on the data.
_HOST_READS = (Tensor.__bool__, Tensor.item, Tensor.tolist, Tensor.__int__, Tensor.__float__, Tensor.__index__,
               Tensor.nonzero, torch.nonzero, Tensor.unique, torch.unique, torch.masked_select)  # fmt: skip


class Capture(TorchFunctionMode):
    """Records every recognised use of a trainable parameter (by tensor identity) during a forward pass.

    A use the capture does not recognise does not stop the forward: the parameter is listed in :attr:`unrecognised`
    with the reason, and the caller computes that parameter's per-example gradients explicitly. Tensors computed
    from parameters and constants (``constants``: frozen parameters and buffers) alone are :class:`Derived`.
    """

    def __init__(
        self,
        trainable: dict[str, Tensor],
        batch_size: int,
        names: dict[int, str] | None = None,
        constants: tuple[Tensor, ...] = (),
    ) -> None:
        super().__init__()
        # ``names`` (shared, filled while the model runs) replaces ``trainable``'s for a sharded model.
        self.names = {id(t): name for name, t in trainable.items()} if names is None else names
        self.batch_size = batch_size
        self.calls: list[Call] = []
        # Embeddings of ids without the batch dimension (positions ``arange(T)``): output id -> (output, call
        # arguments), recorded when an addition broadcasts them over the batch. And the outputs of embeddings
        # recorded per example, which must not be broadcast again.
        self.broadcast: dict[int, tuple[Tensor, str, Tensor, dict]] = {}
        self.batched: dict[int, tuple[Tensor, Call]] = {}
        self.constants = {id(t) for t in constants}
        self._held: list[Tensor] = list(constants)  # keeps the ids above from being reused
        self.unrecognised: dict[str, str] = {}  # parameter -> why its per-example gradients must be explicit
        self.derived: dict[str, Derived] = {}  # pseudo-name -> derived tensor
        self.leaves: dict[str, Tensor] = {}  # parameter -> the differentiable alias derived tensors are made from
        self.host_read: str | None = None  # the first read of batch values into Python

    def _name(self, t: object) -> str | None:
        return self.names.get(id(t)) if isinstance(t, Tensor) else None

    def sources(self, name: str) -> frozenset[str]:
        """The trainable parameters a recorded name stands for (a derived tensor's, or the parameter itself)."""
        return self.derived[name].sources if name in self.derived else frozenset((name,))

    def _mark(self, used, reason: str) -> None:
        for name in used:
            for source in self.sources(name):
                self.unrecognised.setdefault(source, reason)

    def _unrecognised(self, func, args, kwargs, used, reason: str):
        out = func(*args, **kwargs)
        if any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):  # a query such as .shape touches no value
            self._mark(used, reason)
        return out

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm and _arg(args, kwargs, 5, "training", False):
            raise LayerwiseUnsupported("batch normalisation with batch statistics mixes the examples of a batch")
        flat, _ = tree_flatten((args, kwargs))
        if (self.broadcast or self.batched) and any(id(t) in self.broadcast or id(t) in self.batched for t in flat):
            out = self._embedding_use(func, args, kwargs, flat)
            if out is not NotImplemented:
                return out
        used = [self._name(t) for t in flat if self._name(t) is not None]
        if not used:
            out = func(*args, **kwargs)
            tensors = [t for t in flat if isinstance(t, Tensor)]
            if self.host_read is None and func in _HOST_READS and any(id(t) not in self.constants for t in tensors):
                self.host_read = _fn_name(func)
            if tensors and all(id(t) in self.constants for t in tensors):  # a clone of a buffer is a constant too
                for t in tree_flatten(out)[0]:
                    if isinstance(t, Tensor) and id(t) not in self.constants:
                        self.constants.add(id(t))
                        self._held.append(t)
            return out
        # Embeddings of constant ids keep their own path: a derived [T, H] table would cost [N, V * H] gradients.
        derivable = func is not Tensor.expand and func is not F.embedding
        if derivable and (self._batch_free(flat) or (func in _CASTS and self._name(args[0]))):
            return self._derive(func, args, kwargs, used)
        if func is F.linear or func in _CONV:
            return self._affine(func, args, kwargs, used)
        if func in _MATMUL or func in _ADDMM:
            return self._matmul(func, args, kwargs, used)
        if func in _NORMS:
            return self._norm(func, args, kwargs, used)
        if func is F.embedding:
            return self._embedding(args, kwargs, used)
        if func is F.multi_head_attention_forward:
            try:
                return multi_head_attention(args, kwargs, self._linear, self._expand)
            except AttentionUnsupported as err:
                return self._unrecognised(func, args, kwargs, used, str(err))
        if func in _ADD or func in _MUL or func is Tensor.expand:
            return self._elementwise(func, args, kwargs, used)
        return self._unrecognised(func, args, kwargs, used, f"used by {_fn_name(func)}")

    def _batch_free(self, flat) -> bool:
        return all(not isinstance(t, Tensor) or id(t) in self.names or id(t) in self.constants for t in flat)

    def _leaf(self, t: Tensor, name: str) -> Tensor:
        if name not in self.leaves:
            self.leaves[name] = leaf = t.detach().requires_grad_(True)
            self.names[id(leaf)] = name
        return self.leaves[name]

    def _derive(self, func, args, kwargs, used):
        """Run a batch-free op on differentiable aliases of the parameters and name its outputs :class:`Derived`."""

        def alias(t):
            name = self._name(t)
            return self._leaf(t, name) if name is not None and name not in self.derived else t

        args, kwargs = tree_map(alias, (args, kwargs))
        with torch.enable_grad():
            # The fused weight norm has no batching rule: its pullback would run one example at a time.
            out = (_weight_norm if func is torch._weight_norm else func)(*args, **kwargs)
        sources = frozenset().union(*(self.sources(name) for name in used))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor) or id(t) in self.names or id(t) in self.constants:
                continue  # a no-op (``.to`` of the same dtype and device) returns the parameter's alias itself
            self._held.append(t)
            if not t.requires_grad:  # not differentiable (an argmax, a comparison): a constant
                self.constants.add(id(t))
                continue
            name = f"<{_fn_name(func)} of {', '.join(sorted(sources))} #{len(self.derived)}>"
            self.names[id(t)] = name
            self.derived[name] = Derived(t, sources, _fn_name(func), self._weight_norm_args(func, args, kwargs))
        return out

    def _weight_norm_args(self, func, args, kwargs) -> tuple | None:
        if func is not torch._weight_norm or kwargs or len(args) not in (2, 3):
            return None
        v, g = args[:2]
        names = self._name(v), self._name(g)
        if None in names or any(name in self.derived for name in names) or names[0] == names[1]:
            return None
        return (*names, v, g, args[2] if len(args) == 3 else 0)

    def _record(self, kind, out, weight, bias, inputs, **options) -> Tensor:
        if torch.compiler.is_compiling():
            # Inside a compiled region the view below would be a graph intermediate, not a tensor autograd can reach.
            leaf = torch.zeros_like(out, requires_grad=True)
        else:
            # A broadcast zero, not ``zeros_like``: nothing to fill; the gradient with respect to it is still delta.
            leaf = out.new_zeros((), requires_grad=True).expand(out.shape)
        self.calls.append(Call(kind, weight, bias, inputs.detach(), leaf, options))
        return out + leaf  # the sum, not ``out``: in-place ops after the layer must not alter delta

    def _affine(self, func, args, kwargs, used) -> Tensor:
        x, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        b = _arg(args, kwargs, 2, "bias")
        weight, bias = self._name(w), self._name(b)
        if self._name(x) is not None or len(used) != (weight is not None) + (bias is not None):
            return self._unrecognised(func, args, kwargs, used, f"an input (not the weight) of {_fn_name(func)}")
        if func is F.linear:
            return self._record("linear", func(*args, **kwargs), weight, bias, x)
        dims = _CONV[func]
        options = {
            name: _arg(args, kwargs, pos, name, default)
            for pos, name, default in ((3, "stride", 1), (4, "padding", 0), (5, "dilation", 1), (6, "groups", 1))
        }
        if isinstance(options["padding"], str):
            if options["padding"] != "valid":
                return self._unrecognised(func, args, kwargs, used,
                                          f"{_fn_name(func)} with padding={options['padding']!r}")  # fmt: skip
            options["padding"] = 0
        out = func(*args, **kwargs)
        if dims == 1:  # a 1-D convolution is a 2-D one over a height of 1
            x = x.unsqueeze(2)
            heights = {"stride": 1, "padding": 0, "dilation": 1}
            options = {k: (v if k == "groups" else (heights[k], _single(v))) for k, v in options.items()}
        return self._record("conv", out, weight, bias, x, kernel=tuple(w.shape[2:]) if dims == 2 else (1, w.shape[2]),
                            **options)  # fmt: skip

    def _matmul(self, func, args, kwargs, used) -> Tensor:
        """``x @ W`` (``torch.matmul``, ``mm``) and ``addmm(b, x, W)``: a linear layer with weight ``W.T``; the
        rows of a 2-D ``x`` may be the batch's positions flattened (``x.view(-1, p)``, checked by the caller)."""
        if func in _ADDMM:
            b, x, w = (_arg(args, kwargs, k, name) for k, name in enumerate(("input", "mat1", "mat2")))
            plain = len(args) <= 3 and kwargs.get("beta", 1) == 1 and kwargs.get("alpha", 1) == 1
        else:
            b, (x, w), plain = None, (args + (None, None))[:2], len(args) == 2
        weight, bias = self._name(w), self._name(b)
        if (
            not plain
            or kwargs.get("out") is not None
            or self._name(x) is not None
            or not isinstance(w, Tensor)
            or w.dim() != 2
            or not isinstance(x, Tensor)
            or x.dim() < 2
            or (bias is not None and b.dim() != 1)
            or len(used) != (weight is not None) + (bias is not None)
        ):
            return self._unrecognised(func, args, kwargs, used,
                                      f"used by {_fn_name(func)} other than as x @ W with W on the right")  # fmt: skip
        return self._record("linear", func(*args, **kwargs), weight, bias, x, transposed=True)

    def _linear(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        used = [name for name in (self._name(x), self._name(w), self._name(b)) if name is not None]
        return self._affine(F.linear, (x, w, b), {}, used) if used else F.linear(x, w, b)

    def _expand(self, p: Tensor, shape: tuple[int, ...]) -> Tensor:
        name = self._name(p)
        return self._elementwise(Tensor.expand, (p, shape), {}, [name]) if name is not None else p.expand(shape)

    def _elementwise(self, func, args, kwargs, used) -> Tensor:
        fn = _fn_name(func)
        if func is Tensor.expand:
            p, other = args[0], None
        else:
            if len(args) != 2 or kwargs.get("alpha", 1) != 1 or kwargs.get("out") is not None:
                return self._unrecognised(func, args, kwargs, used, f"used by {fn} with options")
            p, other = (args[0], args[1]) if self._name(args[0]) is not None else (args[1], args[0])
        if len(used) != 1 or self._name(other) is not None:
            return self._unrecognised(func, args, kwargs, used, f"meets another parameter in {fn}")
        out = func(*args, **kwargs)
        lead = out.dim() - p.dim() if isinstance(out, Tensor) else -1
        if lead < 0 or (lead == 0 and p.shape[0] != 1):
            self._mark(used, f"not broadcast over the batch by {fn}")
            return out
        kind = "mul" if func in _MUL else "add"
        if kind == "mul" and not (isinstance(other, Tensor) and other.dim() == out.dim()):
            self._mark(used, f"scaled by {fn} with a tensor without a batch dimension")
            return out
        # Dimensions of the output over which the parameter is broadcast (besides the batch): its gradient sums there.
        padded = (1,) * lead + tuple(p.shape)
        dims = tuple(k for k in range(1, out.dim()) if padded[k] == 1 and out.shape[k] != 1)
        inputs = other.expand_as(out) if kind == "mul" else out
        return self._record(kind, out, used[0], None, inputs, dims=dims)

    def _embedding(self, args, kwargs, used) -> Tensor:
        ids, w = _arg(args, kwargs, 0, "input"), _arg(args, kwargs, 1, "weight")
        if self._name(w) is None or len(used) != 1:
            return self._unrecognised(F.embedding, args, kwargs, used, "an input (not the weight) of embedding")
        if _arg(args, kwargs, 3, "max_norm") is not None or _arg(args, kwargs, 5, "scale_grad_by_freq", False):
            # max_norm rewrites the weight in place; scale_grad_by_freq scales by counts over the whole batch.
            return self._unrecognised(F.embedding, args, kwargs, used, "embedding with max_norm or scale_grad_by_freq")
        padding_idx = _arg(args, kwargs, 2, "padding_idx")
        if padding_idx is not None and padding_idx < 0:
            padding_idx += w.shape[0]
        out = F.embedding(*args, **kwargs)
        options = {"padding_idx": padding_idx, "rows": w.shape[0]}
        if ids.dim() == 0 or ids.shape[0] != self.batch_size:
            # The same ids for every example: recorded once an addition broadcasts the output over the batch.
            self.broadcast[id(out)] = (out, self._name(w), ids, options)
            return out
        out = self._record("embedding", out, self._name(w), None, ids, **options)
        self.batched[id(out)] = (out, self.calls[-1])
        return out

    def _embedding_use(self, func, args, kwargs, flat):
        """An op on an embedding's output, or ``NotImplemented`` to go on as usual: ``x + E[positions]`` broadcast
        over the batch (``positions`` of shape ``(T,)`` or ``(1, T)``) is the embedding of the same ids for every
        example (recorded here), and a move, cast or view keeping the last dimension takes the ids along; any other
        use of such an output, or broadcasting a per-example embedding's output again, makes the embedding's weight
        unrecognised (explicit per-example gradients)."""
        if func in _ADD:
            tensors = [t for t in flat if isinstance(t, Tensor)]
            dims = len(torch.broadcast_shapes(*(t.shape for t in tensors)))
            for t in tensors:
                if id(t) in self.batched and dims > t.dim():
                    # Ids of as many positions as the batch has examples, taken for a batch: in fact shared by it.
                    call = self.batched.pop(id(t))[1]
                    self.calls = [c for c in self.calls if c is not call]
                    self.broadcast[id(t)] = (t, call.weight, call.inputs, call.options)
        derived = [t for t in flat if isinstance(t, Tensor) and id(t) in self.broadcast]
        if not derived:
            return NotImplemented
        e, name, ids, options = self.broadcast[id(derived[0])]
        fn = _fn_name(func)
        params = any(self._name(t) is not None for t in flat)
        if func not in _ADD:
            out = func(*args, **kwargs)
            if not any(isinstance(t, Tensor) for t in tree_flatten(out)[0]):
                return out  # a query such as .shape or .dim()
            alone = len(derived) == 1 and not params and isinstance(out, Tensor) and args[0] is derived[0]
            if alone and out is derived[0]:
                return out
            layout = _moved_layout(func, args, kwargs, options.get("layout"), e, out) if alone else None
            if layout is not None:  # a permute or transpose (T5's relative position bias): the ids stay
                self.broadcast[id(out)] = (out, name, ids, {**options, "layout": layout})
                return out
            keeps = alone and func in _KEEPS and "layout" not in options
            if keeps and out.shape[-1:] == e.shape[-1:] and out.numel() == e.numel():
                self.broadcast[id(out)] = (out, name, ids.reshape(out.shape[:-1]), options)
                return out
            plain = options.get("layout", tuple(range(e.dim()))) == tuple(range(e.dim()))
            if (
                len(derived) == 1
                and not params
                and e.dim()
                and e.shape[0] == 1
                and (plain or options["layout"][0] is None)
            ):
                # Used with the batch by another op: each example gets its own copy, recorded as an embedding of
                # the same ids per example (the op then broadcasts as before; the check catches any other use).
                batched = self._per_example_copy(e, name, ids, options)
                args, kwargs = tree_map(lambda t: batched if t is derived[0] else t, (args, kwargs))
                return func(*args, **kwargs)
            self._mark([name], f"an embedding of ids shared by the batch is used by {fn}")
            return out
        if len(args) != 2 or kwargs or len(derived) != 1 or params:
            return self._unrecognised(func, args, kwargs, [name], "an embedding of ids shared by the batch is added "
                                      "with options or parameters")  # fmt: skip
        out = func(*args, **kwargs)
        lead = out.dim() - e.dim()
        layout = options.get("layout")
        if layout is not None:
            options = {k: v for k, v in options.items() if k != "layout"}
            shape, dims = (e.shape[1:], layout[1:]) if lead == 0 and e.shape[0] == 1 else (e.shape, layout)
            if out.dim() - len(shape) == 1 and None not in dims and tuple(out.shape[1:]) == tuple(shape):
                # The output gradient, put back in the embedding's own layout [N, *ids, H] before use.
                order = (0, *(1 + dims.index(d) for d in range(len(dims))))
                return self._record("embedding", out, name, None, ids.expand(out.shape[0], *ids.shape),
                                    order=order, **options)  # fmt: skip
            lead = -1  # refused below
        if lead >= 1 and tuple(out.shape[lead:]) == tuple(e.shape) and out.shape[0] == self.batch_size:
            ids = ids.expand(*out.shape[:lead], *ids.shape)
        elif lead == 0 and e.shape[0] == 1 and out.shape[1:] == e.shape[1:] and out.shape[0] == self.batch_size:
            ids = ids.expand(*out.shape[:-1])  # ids of shape (1, T), as Hugging Face models build them
        else:
            self._mark([name], f"an embedding of ids shared by the batch, of shape {tuple(e.shape)}, is added to "
                       f"shape {tuple(out.shape)}: not a broadcast over the batch")  # fmt: skip
            return out
        return self._record("embedding", out, name, None, ids, **options)

    def _per_example_copy(self, e: Tensor, name: str, ids: Tensor, options: dict) -> Tensor:
        """``e`` (a shared embedding's output, first dimension 1) expanded to the batch and recorded per example."""
        layout = options.get("layout", tuple(range(e.dim())))
        options = {k: v for k, v in options.items() if k != "layout"}
        out = e.expand(self.batch_size, *e.shape[1:])
        if layout == tuple(range(e.dim())):  # the plain layout [1, *ids, H]: ids of shape (1, ...)
            return self._record("embedding", out, name, None, ids.expand(*out.shape[:-1]), **options)
        dims = layout[1:]  # layout[0] is an inserted dimension of size 1
        order = (0, *(1 + dims.index(d) for d in range(len(dims))))
        ids = ids.expand(self.batch_size, *ids.shape)
        return self._record("embedding", out, name, None, ids, order=order, **options)

    def _norm(self, func, args, kwargs, used) -> Tensor:
        x = _arg(args, kwargs, 0, "input")
        if func is F.batch_norm:
            w, b = _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias")
        elif func is not F.layer_norm and func is not F.group_norm:  # rms_norm
            w, b = _arg(args, kwargs, 2, "weight"), None
        else:
            w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
        weight, bias = self._name(w), self._name(b)
        if self._name(x) is not None or len(used) != (weight is not None) + (bias is not None):
            return self._unrecognised(func, args, kwargs, used, f"an input (not the weight) of {_fn_name(func)}")
        if func is F.batch_norm:
            mean, var = _arg(args, kwargs, 1, "running_mean"), _arg(args, kwargs, 2, "running_var")
            eps = _arg(args, kwargs, 7, "eps", 1e-5)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            normalised = (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps)
            lead = 2  # parameters live on the channel dimension 1
        elif func is not F.layer_norm and func is not F.group_norm:  # rms_norm: a layer norm without a mean
            shape = _arg(args, kwargs, 1, "normalized_shape")
            normalised = F.rms_norm(x, shape, None, _arg(args, kwargs, 3, "eps"))
            lead = -len(tuple(shape))
        elif func is F.layer_norm:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            normalised = F.layer_norm(x, shape, None, None, _arg(args, kwargs, 4, "eps", 1e-5))
            lead = -len(tuple(shape))  # parameters cover the trailing normalised dimensions
        else:
            groups = _arg(args, kwargs, 1, "num_groups")
            normalised = F.group_norm(x, groups, None, None, _arg(args, kwargs, 4, "eps", 1e-5))
            lead = 2
        return self._record("norm", func(*args, **kwargs), weight, bias, normalised, lead=lead)


def _weight_norm(v: Tensor, g: Tensor, dim: int = 0) -> Tensor:
    """``torch._weight_norm`` from ops with batching rules: ``v * g / |v|``, the norm over every dimension but
    ``dim`` (all of them for ``dim=-1``)."""
    dims = tuple(range(v.dim())) if dim == -1 else tuple(d for d in range(v.dim()) if d != dim % v.dim())
    return v * (g / v.pow(2).sum(dim=dims, keepdim=True).sqrt())


def _moved_layout(func, args, kwargs, layout, e: Tensor, out: Tensor) -> tuple | None:
    """Which dimension of a shared embedding's own output ``[*ids, H]`` each dimension of ``out`` is (None for an
    inserted one), when ``out`` is ``e`` permuted, transposed, unsqueezed or moved; None for any other op."""
    layout = tuple(range(e.dim())) if layout is None else layout
    if func in (Tensor.permute, torch.permute) and not kwargs:
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        return tuple(layout[d % e.dim()] for d in dims)
    if func in (Tensor.transpose, torch.transpose, Tensor.swapaxes) and not kwargs and len(args) == 3:
        a, b = args[1] % e.dim(), args[2] % e.dim()
        moved = list(layout)
        moved[a], moved[b] = moved[b], moved[a]
        return tuple(moved)
    if layout == tuple(range(e.dim())):
        return None  # views of the plain layout reshape the ids instead
    if func in (Tensor.unsqueeze, torch.unsqueeze) and not kwargs and len(args) == 2:
        d = args[1] % out.dim()
        return layout[:d] + (None,) + layout[d:]
    if func in _KEEPS and func not in (Tensor.view, Tensor.reshape, torch.reshape) and out.shape == e.shape:
        return layout
    return None


def _arg(args, kwargs, pos: int, name: str, default=None):
    return args[pos] if len(args) > pos else kwargs.get(name, default)


def _single(v):
    return v[0] if isinstance(v, (tuple, list)) else v


def _fn_name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
