"""Know before you quantize: memory at every precision, KV cache, training, what fits where (lowbit plan)."""
