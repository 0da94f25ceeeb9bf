"""Smaller and faster after fine-tuning: quantization (and, next, distillation), each measured
against the float model it came from."""
