"""Numba kernels of the optimizers and initializers of embedding rows and dense arrays.

Their names, kinds and arguments are plain data in ``monolith_ps.optimizer_specs``.
"""
