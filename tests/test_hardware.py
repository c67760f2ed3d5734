"""forward_dtype "auto": bfloat16 only on CPUs whose flags promise native bf16 matmuls."""
import pytest
import torch

from lowbit import hardware
from lowbit.pipeline.sequential import quantize_model
from lowbit.spec import QuantSpec
from tests.tiny import tiny_model

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n"


def test_cpu_flags_are_read_from_the_flags_line():
    assert {"avx512_bf16", "amx_bf16"} <= hardware.cpu_flags(SAPPHIRE_RAPIDS)
    assert "avx512_bf16" not in hardware.cpu_flags(SKYLAKE)
    assert hardware.cpu_flags("processor : 0\n") == set()


@pytest.mark.parametrize("cpuinfo,expected", [(SAPPHIRE_RAPIDS, "bfloat16"), (SKYLAKE, "float32")])
def test_auto_follows_the_cpu(monkeypatch, cpuinfo, expected):
    monkeypatch.setattr(hardware, "fast_bf16_cpu", lambda: bool(hardware.cpu_flags(cpuinfo) & set(hardware.FAST_BF16_FLAGS)))
    assert hardware.resolve_forward_dtype("auto") == expected
    assert hardware.resolve_forward_dtype("auto", device="cuda") == "float32"
    assert hardware.resolve_forward_dtype("float32") == "float32"
    assert hardware.resolve_forward_dtype("bfloat16") == "bfloat16"


@pytest.mark.parametrize("fast", [True, False])
def test_the_walk_runs_and_reports_what_auto_became(monkeypatch, fast):
    """The walk's forwards match an explicit run with the resolved dtype, bit for bit."""
    monkeypatch.setattr(hardware, "fast_bf16_cpu", lambda: fast)
    calibration = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(5))
    weights = {}
    for dtype in ("auto", "bfloat16" if fast else "float32"):
        model = tiny_model("llama")
        result = quantize_model(model, QuantSpec(method="gptq", bits=4, group_size=-1,
                                                 method_args={"forward_dtype": dtype}), calibration)
        assert result.forward_dtype == ("bfloat16" if fast else "float32")
        weights[dtype] = [p.detach().clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(*weights.values()))


def test_unknown_forward_dtype_is_refused():
    with pytest.raises(ValueError, match="forward_dtype must be auto, float32 or bfloat16"):
        quantize_model(tiny_model("llama"), QuantSpec(method="gptq", bits=4, method_args={"forward_dtype": "fp16"}),
                       torch.randint(0, 512, (2, 16)))
