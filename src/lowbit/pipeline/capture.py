"""Capture the inputs of the first decoder layer, and run one layer over captured inputs.

Activations are kept as a list of batches (B, T, C); kwargs (masks, rotary embeddings,
positions) are captured with them, so any architecture's layer can be called as the
model itself calls it."""
from __future__ import annotations

import torch


class _Stop(Exception):
    pass


class _Catcher(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module, store: list):
        super().__init__()
        self.layer = layer
        self.store = store

    def forward(self, hidden, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values")}
        self.store.append((hidden.detach(), args, kwargs))
        raise _Stop


@torch.no_grad()
def capture_first_layer_inputs(model, layers: torch.nn.ModuleList, input_ids: torch.Tensor,
                               batch_size: int = 8):
    """Run the model on input_ids (N, T) up to layers[0]; returns [(hidden, args, kwargs)]."""
    store: list = []
    first = layers[0]
    layers[0] = _Catcher(first, store)
    try:
        for i in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids=input_ids[i:i + batch_size], use_cache=False)
            except _Stop:
                pass
    finally:
        layers[0] = first
    return store


def layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def run_layer(layer: torch.nn.Module, batches: list) -> list:
    """Outputs of `layer` for each captured batch, in the same (hidden, args, kwargs) form."""
    return [(layer_output(layer(h, *a, **kw)), a, kw) for h, a, kw in batches]


class StopAfter:
    """Forward pre-hooks that stop a layer's forward once every module of a group has
    seen its input: the rest of the layer is not needed to gather that group's statistics."""

    def __init__(self, modules: dict[str, torch.nn.Module], on_input):
        self.pending: set[str] = set()
        self.names = set(modules)
        self.handles = [m.register_forward_pre_hook(self._hook(n, on_input))
                        for n, m in modules.items()]

    def _hook(self, name, on_input):
        def hook(module, args):
            on_input(name, args[0])
            self.pending.discard(name)
            if not self.pending:
                raise _Stop
        return hook

    @torch.no_grad()
    def run(self, layer, batches):
        for h, a, kw in batches:
            self.pending = set(self.names)
            try:
                layer(h, *a, **kw)
            except _Stop:
                pass

    def remove(self):
        for h in self.handles:
            h.remove()
