"""Typed options (lowbit/options.py): every key of spec.method_args is a field of the walk's
options or of the method's; a misspelled key is a one-line error naming the nearest valid key."""
import dataclasses
import inspect

import pytest

import lowbit
from lowbit import cli
from lowbit.errors import LowbitError
from lowbit.methods import METHODS, get_method
from lowbit.methods.gptq import GPTQOptions
from lowbit.options import WalkOptions, check_method_args, options_of
from lowbit.spec import QuantSpec


@pytest.mark.parametrize("method,args,message", [
    ("gptq", {"damp_percnt": 0.1}, "unknown option 'damp_percnt' for method 'gptq': did you mean 'damp_percent'?"),
    ("gptq", {"act_order": "yes"}, "option act_order='yes' for method 'gptq' must be bool"),
    ("rtn", {"forward_dtype": "fp16"}, "must be one of auto, float32, bfloat16"),
    ("rtn", {"damp_percent": 0.1}, "unknown option 'damp_percent' for method 'rtn'"),
    ("gptq", {"ggml_order": "random"}, "must be one of auto, group, static, none"),
    ("rtn", {"true_sequentail": False}, "did you mean 'true_sequential'?"),
])
def test_bad_options_are_one_line_errors(method, args, message):
    spec = QuantSpec(method=method, method_args=args)
    with pytest.raises(LowbitError) as e:
        check_method_args(spec, get_method(method))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_quantize_refuses_a_misspelled_option_before_loading(tmp_path):
    spec = QuantSpec(method="gptq", method_args={"static_group": False})
    with pytest.raises(LowbitError, match="did you mean 'static_groups'"):
        lowbit.quantize(str(tmp_path / "no-such-model"), spec, tmp_path / "out")


def test_options_read_typed_with_defaults():
    o = options_of(GPTQOptions, {"damp_percent": 0.05, "smooth": "on"})
    assert o.damp_percent == 0.05 and o.act_order and o.static_groups and o.block_size is None
    assert options_of(WalkOptions, {"smooth": "on"}).smooth == "on"


def test_every_option_is_on_the_cli_or_named_api_only():
    """A new field must be given a CLI flag or be listed here as Python-API-only."""
    api_only = {"block_size", "gguf_solver", "ggml_order", "cache_bytes", "smooth_tokens", "head_gptq"}
    flags = set(inspect.signature(cli.quantize).parameters)
    fields = {f.name for cls in (WalkOptions, GPTQOptions) for f in dataclasses.fields(cls)}
    assert fields - api_only <= flags, fields - api_only - flags
    assert not (api_only & flags)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_what_the_cli_builds_passes_the_check(method):
    spec = cli._quantize_spec(None, method, None, None, None, None, None, None, None, None, "auto", "auto")
    check_method_args(spec, get_method(method))


def test_iters_belongs_to_signround():
    spec = cli._quantize_spec(None, "signround", None, None, None, None, None, None, None, None, "auto", "auto",
                              iters=7)
    assert spec.method_args["iters"] == 7
    with pytest.raises(LowbitError, match="--iters applies to --method signround only, not rtn: drop it"):
        cli._quantize_spec(None, "rtn", None, None, None, None, None, None, None, None, "auto", "auto", iters=7)


def test_a_preset_may_rotate_and_an_option_beside_it_overrides():
    args = (None, None, None, None, None, None, None, None, None, "auto", "auto")
    assert cli._quantize_spec("rot-gptq-w4g128", *args).method_args["rotate"] == "hadamard"
    assert "rotate" not in cli._quantize_spec("rot-gptq-w4g128", *args, rotate="none").method_args
    assert cli._quantize_spec("rot-gptq-w4g128", "rtn", *args[1:]).method_args["rotate"] == "hadamard"
    assert "rotate" not in cli._quantize_spec("gptq-w4g128", *args).method_args
    # the default preset (best-4bit) rotates where it can; --method alone means that method as it is
    assert cli._quantize_spec(None, *args).method_args["rotate"] == "auto"
    assert "rotate" not in cli._quantize_spec(None, "rtn", *args[1:]).method_args
    assert cli._quantize_spec(None, "rtn", *args[1:], rotate="hadamard").method_args["rotate"] == "hadamard"
