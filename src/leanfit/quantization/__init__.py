"""LoftQ: low-bit quantization with a LoRA initialization fitted to the quantization error.

Fine-tuning and evaluation of PEFT models live in :mod:`leanfit.quantization.finetune`,
:mod:`leanfit.quantization.data` and :mod:`leanfit.quantization.evaluate`.
"""
