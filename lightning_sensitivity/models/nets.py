"""Reference classifiers: a fully-connected net and a small convolutional net.

Both are plain :class:`torch.nn.Module` objects that return logits ``[N, num_classes]``; they know nothing about
Lightning and can be wrapped by :class:`~lightning_sensitivity.models.LitClassifier` or by your own module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lightning_sensitivity._checks import check_bool, check_int, check_number

__all__ = ["MLP", "SmallCNN"]

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


def _check_positive_int(name: str, value: object) -> int:
    return check_int(value, name, minimum=1)


def _check_widths(name: str, value: object, *, allow_empty: bool) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"`{name}` expected a sequence of positive ints, got {type(value).__name__}")
    widths = tuple(_check_positive_int(f"{name}[{i}]", w) for i, w in enumerate(value))
    if not widths and not allow_empty:
        raise ValueError(f"`{name}` expected at least one entry, got {value!r}")
    return widths


def _check_dropout(value: object) -> float:
    return check_number(value, "dropout", low=0.0, high=1.0, high_open=True)


def _check_bool(name: str, value: object) -> bool:
    return check_bool(value, name)


class MLP(nn.Module):
    """Fully-connected classifier: ``Flatten -> [Linear -> (BatchNorm) -> act -> (Dropout)] * depth -> Linear``.

    Novak et al. (2018) sweep fully-connected nets over widths and depths; ``hidden`` sets both (one entry per hidden
    layer, ``()`` gives a linear classifier).

    Args:
        in_features: number of input features after flattening (e.g. ``784`` for MNIST, ``64`` for 8x8 digits).
        num_classes: number of output logits.
        hidden: width of each hidden layer.
        activation: ``"relu"``, ``"tanh"`` or ``"leaky_relu"``.
        dropout: dropout probability after each hidden activation (``0`` disables it).
        batch_norm: insert ``BatchNorm1d`` between each hidden ``Linear`` and its activation.

    Raises:
        ValueError: if a size is not a positive int, ``activation`` is unknown or ``dropout`` is outside ``[0, 1)``.
        TypeError: if ``hidden`` is not a sequence or ``batch_norm`` is not a bool.

    Example::

        >>> model = MLP(64, 10, hidden=(32, 32))
        >>> model(torch.zeros(5, 1, 8, 8)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        in_features = _check_positive_int("in_features", in_features)
        num_classes = _check_positive_int("num_classes", num_classes)
        widths = _check_widths("hidden", hidden, allow_empty=True)
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        dropout = _check_dropout(dropout)
        batch_norm = _check_bool("batch_norm", batch_norm)

        self.in_features = in_features
        self.num_classes = num_classes
        layers: list[nn.Module] = [nn.Flatten()]
        width_in = in_features
        for width in widths:
            layers.append(nn.Linear(width_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width_in = width
        layers.append(nn.Linear(width_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, num_classes]`` for inputs ``[N, *]`` with ``in_features`` elements per example."""
        return self.net(x)


class SmallCNN(nn.Module):
    """Small convolutional classifier: ``[Conv3x3 -> (BatchNorm) -> ReLU -> MaxPool2]`` blocks, then an MLP head.

    Each block halves the spatial size (floor), so ``input_size`` must be at least ``2 ** len(channels)``. The default
    two blocks suit 28x28 MNIST (-> 7x7), 32x32 CIFAR (-> 8x8) and 8x8 digits (-> 2x2).

    Args:
        in_channels: input channels (1 for MNIST/digits, 3 for CIFAR).
        num_classes: number of output logits.
        channels: output channels of each convolutional block.
        hidden: width of the hidden fully-connected layer (``0`` puts the classifier directly on the features).
        input_size: spatial input size, an int for square images or ``(height, width)``.
        batch_norm: use ``BatchNorm2d`` after each convolution (and ``BatchNorm1d`` in the head).
        dropout: dropout probability before the last ``Linear``.

    Raises:
        ValueError: on non-positive sizes, an ``input_size`` too small for the number of blocks, or ``dropout``
            outside ``[0, 1)``.
        TypeError: if ``channels`` is not a sequence or ``batch_norm`` is not a bool.

    Example::

        >>> model = SmallCNN(3, 10, input_size=32)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
        input_size: int | Sequence[int] = 28,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = _check_positive_int("in_channels", in_channels)
        num_classes = _check_positive_int("num_classes", num_classes)
        widths = _check_widths("channels", channels, allow_empty=False)
        check_int(hidden, "hidden", minimum=0)
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            size = (input_size, input_size)
        elif isinstance(input_size, Sequence) and not isinstance(input_size, str) and len(input_size) == 2:
            size = tuple(input_size)  # type: ignore[assignment]
        else:
            raise ValueError(f"`input_size` expected an int or a (height, width) pair, got {input_size!r}")
        size = (_check_positive_int("input_size", size[0]), _check_positive_int("input_size", size[1]))
        min_size = 2 ** len(widths)
        if min(size) < min_size:
            raise ValueError(
                f"`input_size` expected at least {min_size} for {len(widths)} pooling blocks, got {input_size!r}"
            )
        batch_norm = _check_bool("batch_norm", batch_norm)
        dropout = _check_dropout(dropout)

        self.in_channels = in_channels
        self.num_classes = num_classes
        blocks: list[nn.Module] = []
        c_in = in_channels
        height, width = size
        for c_out in widths:
            # the bias is redundant when BatchNorm follows
            blocks.append(nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                blocks.append(nn.BatchNorm2d(c_out))
            blocks += [nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
            height, width = height // 2, width // 2
        self.features = nn.Sequential(*blocks)
        self.flat_features = c_in * height * width

        head: list[nn.Module] = [nn.Flatten()]
        features_in = self.flat_features
        if hidden > 0:
            head.append(nn.Linear(features_in, hidden))
            if batch_norm:
                head.append(nn.BatchNorm1d(hidden))
            head.append(nn.ReLU())
            features_in = hidden
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(features_in, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[N, num_classes]`` for images ``[N, in_channels, height, width]``."""
        return self.classifier(self.features(x))
