"""Methods choose the codes of one weight matrix. Each registers itself by name."""
from lowbit.methods.base import METHODS, Method, get_method, register_method

# registration lines: importing a module registers its method
from lowbit.methods import rtn  # noqa: E402,F401

__all__ = ["METHODS", "Method", "get_method", "register_method"]
from lowbit.methods import gptq  # noqa: E402,F401
from lowbit.methods import smoothquant  # noqa: E402,F401
from lowbit.methods import llm_int8  # noqa: E402,F401
from lowbit.methods import hqq  # noqa: E402,F401
from lowbit.methods import awq  # noqa: E402,F401
from lowbit.methods import signround  # noqa: E402,F401
