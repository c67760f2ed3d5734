"""lowbit: quantize large language models layer by layer and measure what it cost."""
__version__ = "0.1.0"

from lowbit.spec import QuantSpec, preset  # noqa: E402


def __getattr__(name):
    # the API pulls in transformers; import it only when used
    if name in ("quantize", "evaluate", "load", "plan_bits"):
        from lowbit import api
        return getattr(api, name)
    if name == "export":  # lowbit.export(model, "gptq", out): convert between formats
        from lowbit.convert import export
        return export
    if name in ("run", "generate", "bench"):  # packed modules and real kernels (lowbit/runtime/)
        from lowbit.runtime import api as runtime_api
        return getattr(runtime_api, name)
    raise AttributeError(name)


__all__ = ["QuantSpec", "preset", "quantize", "evaluate", "load", "plan_bits", "export", "run", "generate", "bench", "__version__"]
