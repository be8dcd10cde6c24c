"""Leave the user's model exactly as it was: modes, ``requires_grad``, ``.grad``."""

from __future__ import annotations

from types import TracebackType

from torch import nn


class ModelGuard:
    """Context manager that snapshots a model's state and restores it on exit, even on error.

    Restores every submodule's own ``training`` flag (not just the root's), each
    parameter's ``requires_grad`` and ``.grad`` object. With ``eval_mode=True`` the model
    runs in eval mode inside the block (BatchNorm statistics and dropout frozen).
    """

    def __init__(self, model: nn.Module, eval_mode: bool = True) -> None:
        self.model = model
        self.eval_mode = eval_mode

    def __enter__(self) -> ModelGuard:
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        if self.eval_mode:
            try:
                self.model.eval()
            except BaseException:  # a module's train(False) raised: leave no module changed
                self.__exit__(None, None, None)
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for module, training in self._modes:
            module.training = training
        for param, requires_grad, grad in self._params:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
        self._modes = []
        self._params = []
