"""Peak dense FLOP/s per device, for the MFU of tools/bench_step.py and
tools/bench_torch.py (standard library only: both frameworks import it)."""

from typing import Optional

# (bf16, float32) dense peaks from the vendors' data sheets. For NVIDIA
# GPUs the float32 peak is the TF32 tensor-core one: both JAX (default
# matmul precision) and bench_torch.py (allow_tf32) run float32 convolutions
# and matmuls in TF32 there. TPUs run float32 matmuls as bf16 passes.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": (989e12, 495e12),
    "NVIDIA H100": (989e12, 495e12),
    "NVIDIA H200": (989e12, 495e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 156e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 156e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
}


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak FLOP/s of one `device_kind` device at `dtype`; None if unknown."""
  peaks = PEAK_FLOPS.get(device_kind)
  if peaks is None:
    return None
  return peaks[0 if dtype == "bfloat16" else 1]
