"""Capture the inputs of the first decoder layer, and run one layer over captured inputs.

Activations are kept as a list of batches (B, T, C); kwargs (masks, rotary embeddings,
positions) are captured with them, so any architecture's layer can be called as the
model itself calls it."""
from __future__ import annotations

import torch

from lowbit.compat import layer_output  # noqa: F401  (re-exported for the walk)


class _Stop(Exception):
    pass


class _Catcher(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module, store: list):
        super().__init__()
        self.layer = layer
        self.store = store

    def __getattr__(self, name):  # the model may read attributes of its layers (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.layer, name)

    def forward(self, hidden, *args, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_value", "past_key_values")}
        self.store.append((hidden.detach(), args, kwargs))
        raise _Stop


@torch.no_grad()
def capture_first_layer_inputs(model, layers: torch.nn.ModuleList, input_ids: torch.Tensor,
                               batch_size: int = 8, store=None):
    """Run the model on input_ids (N, T) up to layers[0]; returns [(hidden, args, kwargs)]
    (appended to `store`, a list or pipeline.activations.Activations, when given)."""
    store = [] if store is None else store
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


@torch.no_grad()
def run_layer(layer: torch.nn.Module, batches, cache=None, out=None):
    """Outputs of `layer` for each captured batch, in the same (hidden, args, kwargs) form
    (appended to `out`, a list or Activations, when given)."""
    out = [] if out is None else out
    for b, (h, a, kw) in enumerate(batches):
        if cache is not None:
            cache.batch = b
        out.append((layer_output(layer(h, *a, **kw)), a, kw))
    return out


class StopAfter:
    """Forward pre-hooks that stop a layer's forward once every module of a group has
    seen its input: the rest of the layer is not needed to gather that group's statistics.

    Modules that receive the very same input tensor (q/k/v, gate/up) are reported once:
    `shared[name] = owner` records which module's statistics stand for another's."""

    def __init__(self, modules: dict[str, torch.nn.Module], on_input):
        self.pending: set[str] = set()
        self.names = set(modules)
        self.shared: dict[str, str] = {}
        self._inputs: list = []
        self.handles = [m.register_forward_pre_hook(self._hook(n, on_input))
                        for n, m in modules.items()]

    def _hook(self, name, on_input):
        def hook(module, args):
            x = args[0]
            owner = next((n for t, n in self._inputs if t is x), None)
            if owner is None:
                self._inputs.append((x, name))
                on_input(name, x)
            else:
                self.shared[name] = owner
            self.pending.discard(name)
            if not self.pending:
                raise _Stop
        return hook

    @torch.no_grad()
    def run(self, layer, batches, cache=None):
        for b, (h, a, kw) in enumerate(batches):
            self.pending = set(self.names)
            self._inputs = []
            if cache is not None:
                cache.batch = b
            try:
                layer(h, *a, **kw)
            except _Stop:
                pass
        self._inputs = []

    def remove(self):
        for h in self.handles:
            h.remove()
