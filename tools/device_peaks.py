"""Peak dense FLOP/s per device, for the MFU of tools/bench_step.py and
tools/bench_torch.py (standard library only: both frameworks import it)."""

from typing import Optional

# (bf16, fp32) from the vendors' data sheets; fp32 means plain FP32 (not TF32)
# for GPUs.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": (989e12, 67e12),
    "NVIDIA H100": (989e12, 67e12),
    "NVIDIA H200": (989e12, 67e12),
    "NVIDIA A100-SXM4-80GB": (312e12, 19.5e12),
    "NVIDIA A100-SXM4-40GB": (312e12, 19.5e12),
    "TPU v4": (275e12, 275e12 / 2),
    "TPU v5 lite": (197e12, 197e12 / 2),
}


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
  """Peak FLOP/s of one `device_kind` device at `dtype`; None if unknown."""
  peaks = PEAK_FLOPS.get(device_kind)
  if peaks is None:
    return None
  return peaks[0 if dtype == "bfloat16" else 1]
