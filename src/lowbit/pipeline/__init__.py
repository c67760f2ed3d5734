from lowbit.pipeline.sequential import QuantResult, quantize_model, target_linears

__all__ = ["QuantResult", "quantize_model", "target_linears"]
