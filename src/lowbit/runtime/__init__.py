"""Computing with quantized weights as a runtime does (kernels on packed codes), not by decoding them to float."""
