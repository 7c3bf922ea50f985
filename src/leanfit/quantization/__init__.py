"""LoftQ: low-bit quantization of a pretrained transformer with a LoRA initialization.

- :mod:`leanfit.quantization.checkpoint` — stream a safetensors or GGUF checkpoint tensor by
  tensor, in Hugging Face names and layout.
- :mod:`leanfit.quantization.targets` — which weights are quantized, with how many bits, and
  their matrix view.
"""
