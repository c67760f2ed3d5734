"""The real default model (SmolLM2-135M-Instruct), end to end: quantize, write, read
back, evaluate against the float model on the default evaluation text."""
import math

import pytest

import lowbit
from lowbit.io.load import load_model

WINDOWS = 4  # 4 x 512 tokens: enough for the bars below, a minute on two cores


@pytest.fixture(scope="module")
def base():
    return load_model(None)


@pytest.mark.slow
def test_rtn_w4g128_size_and_quality(tmp_path, base):
    out = tmp_path / "w4g128"
    summary = lowbit.quantize(None, "w4g128", out)
    # 576-wide rows cannot hold groups of 128 in compressed-tensors: 96 is used and recorded
    assert {c["used"] for c in summary["layout_changes"].values()} == {96}
    assert len(summary["layout_changes"]) == 180
    res = lowbit.evaluate(str(out), base=base, max_windows=WINDOWS)
    assert math.isfinite(res["perplexity"]) and math.isfinite(res["base_perplexity"])
    assert res["size_bytes"] < 0.35 * res["base_size_bytes"]
    assert 4.2 < res["bits_per_weight"] < 4.4  # 4 bits + fp32 scale per 96 or 128 weights
    assert res["base_perplexity"] < res["perplexity"] < 2 * res["base_perplexity"]
    assert 0 < res["kld"] < 1


@pytest.mark.slow
def test_rtn_w8_per_channel_is_within_one_percent(tmp_path, base):
    out = tmp_path / "w8"
    lowbit.quantize(None, "w8", out)
    res = lowbit.evaluate(str(out), base=base, max_windows=WINDOWS)
    assert abs(res["perplexity"] / res["base_perplexity"] - 1) < 0.01
    assert res["kld"] < 0.01 and res["top1_agreement"] > 0.95
    assert res["size_bytes"] < 0.45 * res["base_size_bytes"]  # the fp32 embeddings (113 MB) stay
