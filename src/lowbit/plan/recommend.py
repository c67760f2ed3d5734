"""Which method, grid and format to pick: "when to use what" as rules over the target runtime and
the memory there is, each choice with lowbit's own measured quality when docs/results.md has it.

Rules, in order: the highest precision whose weights plus the KV cache and activations at the
requested context fit wins (float, then 8-bit, then 4-bit, then 3-bit, then 2-bit); the format is
the one the runtime loads (llama.cpp / Ollama: GGUF; vLLM: compressed-tensors; transformers:
compressed-tensors; lowbit's runtime: compressed-tensors, which its int4 / int8 kernels run).
llama.cpp users get Q8_0 even when float fits: it is near lossless and half the bytes per token.
"""
from __future__ import annotations

RUNTIMES = ("llama.cpp", "ollama", "vllm", "transformers", "lowbit")

# runtime -> [(precision tier, setting key, command)], best first; keys name plan/weights.py settings
CHOICES = {
    "gguf": [("8-bit", "Q8_0", "lowbit quantize --format gguf --gguf-type Q8_0"),
             ("5-6-bit", "Q6_K", "lowbit quantize --format gguf --gguf-type Q6_K"),
             ("4-bit", "Q4_K_M", "lowbit quantize --format gguf --gguf-type Q4_K_M"),
             ("3-bit", "Q3_K_M", "lowbit quantize --format gguf --gguf-type Q3_K_M"),
             ("2-bit", "Q2_K", "lowbit quantize --format gguf --gguf-type Q2_K")],
    "hf": [("float", "bf16", "no quantization needed (bf16)"),
           ("8-bit", "int8 per channel", "lowbit quantize --method rtn --bits 8 --group-size -1"),
           ("4-bit", "int4 g128", "lowbit quantize (GPTQ w4 g128)"),
           ("3-bit", "int3 g128", "lowbit quantize --bits 3"),
           ("2-bit", "int2 g64", "lowbit quantize --bits 2 --group-size 64")],
}
RUNTIME_FORMAT = {"llama.cpp": "gguf", "ollama": "gguf", "vllm": "hf", "transformers": "hf", "lowbit": "hf"}

# lowbit's measured KLD against the float model on the default model (SmolLM2-135M-Instruct),
# docs/results.md; GGUF rows judged by llama.cpp (20 x 512 tokens), the rest 24-40 x 512
MEASURED_KLD = {"bf16": 0.0, "Q8_0": 0.0021, "Q6_K": None, "Q4_K_M": 0.0221, "Q3_K_M": 0.0665, "Q2_K": 0.1677,
                "int8 per channel": 0.0035, "int4 g128": 0.2151, "int3 g128": 0.808, "int2 g64": None,
                "NF4 + double quant": 0.1535}


def recommend(by_key: dict[str, int], need_beside_weights: int, usable: int, runtime: str = "transformers",
              float_bytes: int | None = None) -> dict:
    """The first choice for `runtime` whose weights (by_key: setting -> bytes; float_bytes for
    the float tier) and `need_beside_weights` (KV + activations) fit in `usable` bytes."""
    fmt = RUNTIME_FORMAT[runtime]
    for tier, key, command in CHOICES[fmt]:
        weights = float_bytes if tier == "float" and fmt != "gguf" else by_key.get(key)
        if weights is None:
            continue
        if weights + need_beside_weights <= usable:
            return {"runtime": runtime, "tier": tier, "setting": key, "command": command, "weights_bytes": weights,
                    "total_bytes": weights + need_beside_weights, "usable_bytes": usable, "fits": True,
                    "measured_kld_default_model": MEASURED_KLD.get(key)}
    key = CHOICES[fmt][-1][1]
    return {"runtime": runtime, "tier": None, "setting": None, "fits": False, "usable_bytes": usable,
            "command": None, "smallest_bytes": by_key.get(key, 0) + need_beside_weights,
            "advice": "nothing fits: use a machine with more memory, a shorter --ctx, or offload layers"}
