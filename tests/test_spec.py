import pytest

from lowbit.errors import LowbitError
from lowbit.spec import QuantSpec, preset


def test_presets():
    assert preset("w4g128") == QuantSpec(bits=4, group_size=128)
    assert preset("w8") == QuantSpec(bits=8, group_size=-1)
    s = preset("gptq-w3g128-asym")
    assert (s.method, s.bits, s.group_size, s.symmetric) == ("gptq", 3, 128, False)
    assert preset("w4-mse").clip == "mse"


def test_json_round_trip():
    s = QuantSpec(method="gptq", bits=3, group_size=64, symmetric=False,
                  overrides=(("re:.*down_proj", {"bits": 8}),), method_args={"damp_percent": 0.05})
    assert QuantSpec.from_json(s.to_json()) == s


def test_overrides_apply_by_regex():
    s = QuantSpec(overrides=(("re:.*down_proj", {"bits": 8, "group_size": -1}),))
    assert s.for_module("model.layers.3.mlp.down_proj").bits == 8
    assert s.for_module("model.layers.3.mlp.up_proj").bits == 4


@pytest.mark.parametrize("kw", [{"bits": 1}, {"bits": 9}, {"group_size": -5}, {"clip": "max"}])
def test_bad_values_are_refused(kw):
    with pytest.raises(LowbitError):
        QuantSpec(**kw)


def test_unknown_preset():
    with pytest.raises(LowbitError, match="unknown preset"):
        preset("int4-foo")


def test_spec_names_are_the_registries_names():
    """spec.py validates names without importing the grids (it stays torch-free): its lists must
    be exactly what the registries hold."""
    from lowbit.formats import GRIDS
    from lowbit.formats.act_quant import ACT_SCHEMES, NONE
    from lowbit.spec import ACT_SCHEMES as SPEC_ACTS, GRID_NAMES, MICROSCALING

    assert set(GRID_NAMES) == set(GRIDS) - {"ggml"}
    assert set(SPEC_ACTS) == {NONE, *ACT_SCHEMES}
    for name, block in MICROSCALING.items():
        assert GRIDS[name](preset(name), "minmax").block == block
