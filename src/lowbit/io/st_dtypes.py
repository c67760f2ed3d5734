"""The safetensors dtypes lowbit reads and writes: name -> (bytes per element, torch dtype name).
The one table for header checks, readers, writers and size accounting; torch is imported only
by torch_dtypes(), so the header checks stay free of it."""
from __future__ import annotations

DTYPES = {  # in the order error messages list them
    "BOOL": (1, "bool"), "U8": (1, "uint8"), "I8": (1, "int8"), "F8_E5M2": (1, "float8_e5m2"),
    "F8_E4M3": (1, "float8_e4m3fn"), "I16": (2, "int16"), "U16": (2, "uint16"), "F16": (2, "float16"),
    "BF16": (2, "bfloat16"), "I32": (4, "int32"), "U32": (4, "uint32"), "F32": (4, "float32"),
    "I64": (8, "int64"), "U64": (8, "uint64"), "F64": (8, "float64"),
}
ELEMENT_BYTES = {name: size for name, (size, _) in DTYPES.items()}


def torch_dtypes() -> dict:
    """{torch dtype: safetensors name} for the dtypes this torch has."""
    import torch
    return {getattr(torch, attr): name for name, (_, attr) in DTYPES.items() if hasattr(torch, attr)}
