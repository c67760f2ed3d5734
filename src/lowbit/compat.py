"""What differs between the transformers versions lowbit supports (4.57 and 5.x), in one place.

transformers 5 keeps RoPE settings in `config.rope_parameters` (4.x: `rope_theta` and
`rope_scaling`), computes rotary buffers in each rotary module's constructor without a
`rope_init_fn` attribute, and moved `no_init_weights` to `transformers.initialization`.
"""
from __future__ import annotations

import contextlib

import torch
import transformers

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def layer_output(out):
    """A decoder layer's hidden states: transformers 4.x layers return a tuple, 5.x a tensor."""
    return out[0] if isinstance(out, (tuple, list)) else out


def no_init_weights():
    """Context in which from_config skips random initialisation (every weight is overwritten)."""
    try:
        from transformers.initialization import no_init_weights as ctx
    except ImportError:
        try:
            from transformers.modeling_utils import no_init_weights as ctx
        except ImportError:  # neither: initialising is only slower
            return contextlib.nullcontext()
    return ctx()


def _has_parameters(params) -> bool:
    return isinstance(params, dict) and params.get("rope_theta") is not None


def _rope(params, theta, scaling) -> dict:
    """{"rope_theta", "rope_type", ...} from 5's rope_parameters, else 4.x's rope_theta + rope_scaling."""
    if _has_parameters(params):
        out = dict(params)
        out.setdefault("rope_type", "default")
        return out
    out = {"rope_theta": theta, "rope_type": "default"}
    if isinstance(scaling, dict):
        out.update(scaling)
        out["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
        out.pop("type", None)
    return out


def rope_of_config(config) -> dict:
    """The RoPE settings the installed transformers computes with: {"rope_theta", "rope_type", ...}
    (4.x also keeps a file's unknown `rope_parameters` as an attribute, but computes without it)."""
    params = getattr(config, "rope_parameters", None) if TRANSFORMERS_MAJOR >= 5 else None
    return _rope(params, getattr(config, "rope_theta", None), getattr(config, "rope_scaling", None))


def rope_of_file(raw: dict) -> dict | None:
    """The RoPE settings a config.json states, in either version's layout (None: it states none)."""
    if not _has_parameters(raw.get("rope_parameters")) and raw.get("rope_theta") is None:
        return None
    return _rope(raw.get("rope_parameters"), raw.get("rope_theta"), raw.get("rope_scaling"))


def rope_theta(config) -> float:
    return float(rope_of_config(config)["rope_theta"])


def rope_scaling(config) -> dict | None:
    """RoPE scaling (llama3, linear, yarn, ...) or None for plain RoPE."""
    rope = rope_of_config(config)
    if rope.get("rope_type", "default") == "default":
        return None
    return {k: v for k, v in rope.items() if k != "rope_theta"}


def set_rope(config, rope: dict) -> None:
    """Make the installed transformers compute with `rope` (a file's settings it did not read)."""
    if TRANSFORMERS_MAJOR >= 5:
        config.rope_parameters = dict(rope)
    else:
        config.rope_theta = rope["rope_theta"]
        scaling = {k: v for k, v in rope.items() if k != "rope_theta"}
        config.rope_scaling = None if scaling.get("rope_type", "default") == "default" else scaling


def init_nonpersistent_buffers(model: torch.nn.Module) -> None:
    """Recompute buffers that checkpoints do not hold (rotary inv_freq) after a model was built
    on the meta device: each parameterless module that owns such buffers is built again on the
    CPU from its config, as the model's own constructor builds it."""
    for name, module in list(model.named_modules()):
        if not getattr(module, "_non_persistent_buffers_set", None):
            continue
        if any(True for _ in module.parameters()) or getattr(module, "config", None) is None:
            continue
        with torch.device("cpu"):
            fresh = type(module)(module.config)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else None
        if parent is None:
            continue
        setattr(parent, attr, fresh.eval())
