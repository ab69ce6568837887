"""``H = 2 X X^T / N`` of one layer's inputs: the Hessian of ``||W X - W' X||^2 / N``.

Feeds layer-wise OBS (OBC / SparseGPT) and GPTQ. ``X`` has one column per input row: a
Linear layer's input vectors (extra leading dimensions flattened), a Conv2d's unfolded
patches (``in*kh*kw`` long, one per output position), so ``W`` is ``weight.reshape(out, -1)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..errors import DataError, NumericalError, UnsupportedLayerError
from .layers import conv2d_columns, layer_type


def _linear_rows(module: nn.Linear, x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-1])


def _conv2d_rows(module: nn.Conv2d, x: Tensor) -> Tensor:
    if module.groups != 1:
        raise UnsupportedLayerError(
            f"layer-wise statistics need groups=1 convolutions, found groups={module.groups}"
        )
    cols = conv2d_columns(module, x)  # (n, in*kh*kw, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


INPUT_ROWS: dict[type[nn.Module], Callable[[nn.Module, Tensor], Tensor]] = {
    nn.Linear: _linear_rows,
    nn.Conv2d: _conv2d_rows,
}


def input_rows_fn(module: nn.Module, name: str = "layer") -> Callable[[nn.Module, Tensor], Tensor]:
    for cls in type(module).__mro__:
        if cls in INPUT_ROWS:
            return INPUT_ROWS[cls]
    raise UnsupportedLayerError(
        f"{name} is a {layer_type(module)} layer; layer-wise OBS / GPTQ handle "
        f"{', '.join(c.__name__ for c in INPUT_ROWS)} (use criterion 'obs' or 'obd' instead)"
    )


class LayerInputStats:
    """Accumulates ``sum x x^T`` and the row count of one layer's inputs.

    Feed it with ``update(x)`` or by ``attach()`` (a forward hook; ``detach()`` removes it).
    ``hessian()`` returns ``H = 2 X X^T / N`` (cols, cols) in ``dtype``.
    """

    def __init__(
        self, module: nn.Module, name: str = "layer", dtype: torch.dtype = torch.float32
    ) -> None:
        self.module, self.name, self.dtype = module, name, dtype
        self._rows = input_rows_fn(module, name)
        self._handle: RemovableHandle | None = None
        self.reset()

    def reset(self) -> None:
        self.sum_: Tensor | None = None
        self.count_ = 0

    def update(self, x: Tensor) -> None:
        rows = self._rows(self.module, x.detach()).to(self.dtype)
        xtx = rows.T @ rows
        if not bool(torch.isfinite(xtx).all()):
            raise NumericalError(
                f"the inputs of {self.name} contain NaN or infinite values; check the "
                "calibration data (normalisation) and the layers before it"
            )
        self.sum_ = xtx if self.sum_ is None else self.sum_ + xtx
        self.count_ += rows.shape[0]

    def attach(self) -> LayerInputStats:
        self.detach()
        self._handle = self.module.register_forward_hook(lambda m, inp, out: self.update(inp[0]))
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def hessian(self) -> Tensor:
        if self.sum_ is None:
            raise DataError(
                f"{self.name} saw no inputs; run calibration data through the model first"
            )
        return 2.0 * self.sum_ / self.count_
