"""Numerical references shared by the float64 loss tests."""

import numpy as np


def central_difference(fn, x, step):
  """∂fn/∂x of scalar `fn` at float64 `x` by central differences.

  `step` is a scalar or an array broadcastable to `x` (per-element steps);
  the truncation error is O(step²), the rounding error ~1e-16·|fn|/step.
  """
  x = np.asarray(x, np.float64)
  steps = np.broadcast_to(np.asarray(step, np.float64), x.shape)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    h = steps[idx]
    up, down = x.copy(), x.copy()
    up[idx] += h
    down[idx] -= h
    grad[idx] = (fn(up) - fn(down)) / (2 * h)
  return grad
