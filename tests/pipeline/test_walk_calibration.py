"""The layer walk with calibration: every Linear's statistics come from exactly the inputs
it sees in the final quantized model (true-sequential), and GPTQ beats RTN end to end."""
import pytest
import torch

from lowbit.calibration.observer import Observer
from lowbit.methods.base import METHODS, Method, register_method
from lowbit.pipeline import quantize_model, target_linears
from lowbit.spec import QuantSpec
from tiny import tiny_model


class _Record(Observer):
    def __init__(self):
        self.inputs = []

    def add_batch(self, x):
        self.inputs.append(x.detach().clone())


@pytest.fixture
def spy_method():
    seen = {}

    @register_method
    class Spy(Method):
        name = "spy"
        needs_calibration = True

        def observer(self, module, spec):
            return _Record()

        def quantize(self, W, grid, spec, observer=None):
            seen[W.data_ptr()] = observer
            return grid.rtn(W)

    yield seen
    METHODS.pop("spy")


def _final_inputs(model, names, calibration, batch_size):
    """Inputs each Linear receives when the finished model runs on the calibration data."""
    got = {n: [] for n in names}
    mods = dict(model.named_modules())
    hooks = [mods[n].register_forward_pre_hook(lambda m, a, n=n: got[n].append(a[0].detach().clone()))
             for n in names]
    with torch.no_grad():
        for i in range(0, calibration.shape[0], batch_size):
            model(input_ids=calibration[i:i + batch_size], use_cache=False)
    for h in hooks:
        h.remove()
    return got


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "opt"])
@pytest.mark.parametrize("true_sequential", [True, False])
def test_statistics_see_the_quantized_model(spy_method, family, true_sequential):
    model = tiny_model(family)
    spec = QuantSpec(method="spy", bits=2, group_size=-1, method_args={"true_sequential": true_sequential,
                                                                       "forward_dtype": "float32"})
    names = list(target_linears(model, spec))
    observers = {}
    mods = dict(model.named_modules())
    calibration = torch.randint(0, 512, (6, 40), generator=torch.Generator().manual_seed(0))
    quantize_model(model, spec, calibration, batch_size=4)
    by_weight = {mods[n].weight.data_ptr(): n for n in names}
    observers = {by_weight[k]: v for k, v in spy_method.items() if k in by_weight}
    assert set(observers) == set(names)
    final = _final_inputs(model, names, calibration, 4)
    o_proj = [n for n in names if n.endswith(("o_proj", "out_proj"))][0]
    for n in names:
        same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(observers[n].inputs, final[n]))
        if true_sequential or n.startswith(o_proj.rsplit(".", 2)[0] + ".self_attn.q"):
            assert same, n
    if not true_sequential:  # one pass per layer: o_proj saw the float q/k/v outputs
        assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(observers[o_proj].inputs, final[o_proj]))


@pytest.mark.parametrize("forward_dtype", ["float32", "bfloat16"])
def test_gptq_beats_rtn_on_the_model_output(forward_dtype):
    calibration = torch.randint(0, 512, (16, 64), generator=torch.Generator().manual_seed(1))
    held_out = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(2))
    ref = tiny_model("llama")
    with torch.no_grad():
        target = ref(held_out).logits
    errors = {}
    for method in ("rtn", "gptq"):
        model = tiny_model("llama")
        spec = QuantSpec(method=method, bits=3, group_size=-1, method_args={"forward_dtype": forward_dtype})
        quantize_model(model, spec, calibration)
        with torch.no_grad():
            errors[method] = float(((model(held_out).logits - target) ** 2).mean())
    assert errors["gptq"] < 0.7 * errors["rtn"], errors


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_output_cache_changes_nothing(family):
    """Replaying cached Linear outputs gives bit-identical codes to recomputing them."""
    calibration = torch.randint(0, 512, (8, 32), generator=torch.Generator().manual_seed(3))
    codes = []
    for cache_bytes in (0, 1 << 30):
        model = tiny_model(family)
        spec = QuantSpec(method="gptq", bits=3, group_size=32, method_args={"cache_bytes": cache_bytes})
        codes.append(quantize_model(model, spec, calibration, batch_size=4).tensors)
    for name in codes[0]:
        assert torch.equal(codes[0][name].q, codes[1][name].q), name
