"""Compiled kernels of dpo_fast (Cython drivers over the C code in csrc/)."""
