"""bits_per_weight and size_bytes of GPTQ, AWQ and GGUF files, against values worked by hand
from the layouts (docs/design/gptq_awq.md, gguf.GGML_QUANT_SIZES)."""
import json

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from lowbit.eval.size import bits_per_weight, size_on_disk
from lowbit.formats import quantize_rtn
from lowbit.io import awq_gemm, gptq_v1
from lowbit.io.gguf_writer import write_gguf


def _dir(tmp_path, name, qconfig, tensors):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": qconfig}))
    save_file(tensors, str(d / "model.safetensors"))
    return d


def _qt(out=64, inp=256, bits=4, group=128, sym=False):
    torch.manual_seed(0)
    return quantize_rtn(torch.randn(out, inp), bits, sym, group)


def test_gptq_4bit_g128_by_hand(tmp_path):
    # one (64, 256) layer, 4-bit groups of 128: qweight int32 (256*4/32 = 32, 64) = 8192 bytes,
    # qzeros int32 (2 groups, 64*4/32 = 8) = 64 bytes, scales fp16 (2, 64) = 256 bytes,
    # g_idx int32 (256,) = 1024 bytes -> 9536 bytes * 8 / 16384 weights
    # = 4 + 16/128 (scale) + 4/128 (packed zero) + 32/64 (g_idx: 32 bits per column of 64 rows)
    t = gptq_v1.pack_tensor("m", _qt(), torch.float32)
    d = _dir(tmp_path, "gptq", gptq_v1.quantization_config({"m": _qt()}, []), t)
    assert bits_per_weight(d) == 4 + 16 / 128 + 4 / 128 + 32 / 64 == 9536 * 8 / 16384
    assert size_on_disk(d) == (d / "model.safetensors").stat().st_size
    # without g_idx (older AutoGPTQ files) the row count comes from qweight and the bits
    t.pop("m.g_idx")
    d2 = _dir(tmp_path, "gptq-no-gidx", gptq_v1.quantization_config({"m": _qt()}, []), t)
    assert bits_per_weight(d2) == 4 + 16 / 128 + 4 / 128


def test_gptq_3bit_channel_by_hand(tmp_path):
    # (64, 96) 3-bit per channel: qweight (96*3/32 = 9, 64) int32 = 2304 bytes, qzeros (1, 6) = 24,
    # scales (1, 64) fp16 = 128, g_idx (96,) int32 = 384 -> 2840 * 8 / 6144
    qt = _qt(inp=96, bits=3, group=-1)
    d = _dir(tmp_path, "gptq3", gptq_v1.quantization_config({"m": qt}, []), gptq_v1.pack_tensor("m", qt, torch.float32))
    assert bits_per_weight(d) == 2840 * 8 / 6144


def test_awq_4bit_g128_by_hand(tmp_path):
    # qweight int32 (256, 64/8) = 8192 bytes, qzeros (2, 8) = 64, scales fp16 (2, 64) = 256, no g_idx
    qt = _qt()
    d = _dir(tmp_path, "awq", awq_gemm.quantization_config({"m": qt}, []), awq_gemm.pack_tensor("m", qt, torch.float32))
    assert bits_per_weight(d) == 4 + 16 / 128 + 4 / 128 == 8512 * 8 / 16384


def test_gguf_block_types_by_hand(tmp_path, tiny_tok):
    # Q8_0: 32 weights in 2 (fp16 scale) + 32 bytes = 8.5 bits; Q4_0: 2 + 16 bytes = 4.5 bits.
    # Only the decoder layers' Linears count (embeddings / output are not quantized Linears).
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    for ftype, bits in (("Q8_0", 8.5), ("Q4_0", 4.5)):
        f = write_gguf(tmp_path / f"m-{ftype}.gguf", model, tiny_tok, ftype)
        assert bits_per_weight(f) == bits, ftype
        assert size_on_disk(f) == f.stat().st_size
    # the default model's Q4_K_M mix, worked by hand (per layer: q/k/o/gate/up Q5_0 = 22 bytes per 32
    # weights, 5.5 bits; attn_v Q8_0 (8.5) in the 14 use_more_bits layers else Q5_0; ffn_down Q6_K
    # (210 bytes / 256 = 6.5625) in those 14 layers else Q4_K (144 / 256 = 4.5)) is what
    # `lowbit eval --json` reported for `lowbit export --format gguf --gguf-type Q4_K_M` of it:
    q, kv, ff = 576 * 576, 192 * 576, 1536 * 576
    bits = 30 * (2 * q + kv + 2 * ff) * 5.5 + kv * (14 * 8.5 + 16 * 5.5) + ff * (14 * 6.5625 + 16 * 4.5)
    assert bits / (30 * (2 * q + 2 * kv + 3 * ff)) == 5.534375


def test_float_directory_has_none(tmp_path):
    d = tmp_path / "float"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    save_file({"a.weight": torch.zeros(4, 4)}, str(d / "model.safetensors"))
    assert bits_per_weight(d) is None
