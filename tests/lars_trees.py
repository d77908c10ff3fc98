"""Parameter trees shared by the LARS tests (test_optim, test_byol_parts).

A conv kernel, a dense kernel and bias, and BatchNorm scale and bias: the
leaves whose treatment LARS distinguishes (kernels adapted and decayed,
biases and BN parameters neither).
"""

import jax
import numpy as np

from jaxssl import precision

SHAPES = {
    "conv": {"kernel": (3, 3, 2, 4)},
    "dense": {"kernel": (4, 3), "bias": (3,)},
    "bn": {"scale": (4,), "bias": (4,)},
}
# Paths of the leaves (in a fixed order) and whether LARS adapts them.
LEAVES = [
    (("conv", "kernel"), True),
    (("dense", "kernel"), True),
    (("dense", "bias"), False),
    (("bn", "scale"), False),
    (("bn", "bias"), False),
]


def get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def random_tree(seed, scale=1.0):
  """float64 numpy leaves (the LARS tests run in JAX's 64-bit mode)."""
  rng = np.random.default_rng(seed)
  return {
      mod: {
          name: scale * rng.standard_normal(shape)
          for name, shape in leaves.items()
      } for mod, leaves in SHAPES.items()
  }


def to_jnp(tree):
  """JAX arrays in full precision (float64 in 64-bit mode)."""
  return jax.tree.map(precision.to_full, tree)
