r"""Prints the Markdown tables of `tools/gpu_bench.sh`'s JSON lines.

  python tools/bench_table.py /tmp/jaxssl_gpu_bench/bench.jsonl

Throughput rows (from bench_step.py / bench_torch.py) and max-batch rows
(bench_step.py --find_max_batch); for each method, batch and dtype measured
by both frameworks, the JAX / PyTorch images/s ratio. Standard library only.
"""

import json
import os
import sys
from typing import Iterable, List


def append_row(path: str, row: str, *, title: str, header: str) -> None:
  """Appends a Markdown `row` to the table under the `title` heading of
  `path` (BENCHMARKS.md), creating the heading and `header` where missing;
  the row goes at the end of that table, wherever the table is."""
  text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
  if title not in text:
    text = text.rstrip("\n") + f"\n\n{title}\n\n{header}"
  start = text.index(title)
  end = text.find("\n## ", start + len(title))
  end = len(text) if end < 0 else end + 1
  table = text[start:end].rstrip("\n") + "\n" + row + "\n"
  text = text[:start] + table + ("\n" + text[end:] if end < len(text) else "")
  with open(path, "w") as f:
    f.write(text)


def _fmt(value, spec: str, none: str = "n/a") -> str:
  return none if value is None else format(value, spec)


def _model(row: dict) -> str:
  """R50, or the row's own name (ViT-S/16) where it gives one."""
  return row.get("model") or f"R{row['depth']}"


def _views(row: dict) -> str:
  """The crops (2×224+10×96) where the row gives them, else the size."""
  return row.get("views") or str(row["image_size"])


def _markdown(columns: List[str], cells: List[List[str]]) -> List[str]:
  """A Markdown table; columns starting with '>' are right-aligned."""
  names = [c.lstrip(">") for c in columns]
  rule = ["---:" if c.startswith(">") else "---" for c in columns]
  return ["| " + " | ".join(row) + " |" for row in [names, rule, *cells]]


def throughput_table(rows: List[dict]) -> List[str]:
  columns = ["framework", "method", "model", ">px (crops)", ">batch", "dtype", "remat",
             ">micro-batches", "in-step aug.", ">img/s", ">ms/step",
             ">peak GiB", ">XLA GiB", ">MFU"]
  mfu = lambda r: None if r.get("mfu") is None else f"{100 * r['mfu']:.1f} %"
  return _markdown(columns, [[
      r["framework"], r["method"], _model(r), _views(r),
      str(r["batch_size"]), r["dtype"], r.get("remat", "none"),
      str(r.get("microbatches", 1)), "yes" if r.get("augment") else "no",
      f"{r['images_per_second']:.0f}", f"{r['step_ms']:.1f}",
      _fmt(r.get("peak_memory_gib"), ".1f"),
      _fmt(r.get("xla_memory_gib"), ".1f", "—"), mfu(r) or "n/a"]
                                    for r in rows])


NOTE = (
    "img/s: images (each with all its views or crops) per second of the "
    "global batch. "
    "peak GiB: JAX, the allocator's peak over the whole process (init, "
    "autotuning and warm-up included); PyTorch, max_memory_allocated after "
    "warm-up. XLA GiB: the compiled JAX step's buffers (arguments + outputs "
    "− donated + temporaries). MFU: model FLOPs per step / step time / the "
    "device's dense peak (tools/device_peaks.py; float32 = TF32 on NVIDIA); "
    "JAX counts XLA's FLOPs of the plain step (elementwise work included, "
    "recomputation not), PyTorch the conv/matmul FLOPs of "
    "torch.utils.flop_counter, so at equal speed JAX's MFU reads a few % "
    "higher.")


def ratio_lines(rows: List[dict]) -> List[str]:
  """JAX / PyTorch images/s for configurations measured by both."""
  def key(r):
    return (r["method"], r["depth"], r["image_size"], r["batch_size"],
            r["dtype"])
  jax_rows = {key(r): r for r in rows if r["framework"].startswith("jax")
              and not r.get("augment") and r.get("microbatches", 1) == 1
              and r.get("remat", "none") == "none"}
  lines = []
  for r in rows:
    if r["framework"].startswith("torch") and key(r) in jax_rows:
      ratio = jax_rows[key(r)]["images_per_second"] / r["images_per_second"]
      lines.append(f"- {r['method']} R{r['depth']} {r['image_size']} px, "
                   f"batch {r['batch_size']}, {r['dtype']}: JAX / PyTorch = "
                   f"**{ratio:.2f}×**")
  return lines


def max_batch_table(rows: List[dict]) -> List[str]:
  columns = ["method", "model", ">px (crops)", "dtype", "remat", ">micro-batch size",
             ">max batch", ">XLA GiB", ">limit GiB", ">next tried",
             "verified"]
  return _markdown(columns, [[
      r["method"], _model(r), _views(r), r["dtype"],
      r["remat"], str(r["microbatch_size"] or "whole"), str(r["max_batch"]),
      f"{r['xla_memory_gib']:.1f}", f"{r['memory_limit_gib']:.1f}",
      str(r["first_too_large"] or "—"),
      ("ran 2 steps" if "verified_loss" in r
       else "FAILED to run" if "verify_error" in r else "compile only")]
                            for r in rows])


def tables(records: Iterable[dict]) -> str:
  records = list(records)
  steps = [r for r in records if "images_per_second" in r]
  searches = [r for r in records if "max_batch" in r]
  out = []
  if steps:
    out += [f"Device: {steps[0]['device']}", ""] + throughput_table(steps)
    out += ["", NOTE]
    ratios = ratio_lines(steps)
    if ratios:
      out += [""] + ratios
  if searches:
    out += ["", "Largest batch per device:", ""] + max_batch_table(searches)
  return "\n".join(out)


def main(argv):
  if len(argv) != 2:
    raise SystemExit(f"usage: {argv[0]} BENCH.jsonl")
  with open(argv[1]) as f:
    print(tables(json.loads(line) for line in f if line.strip()))


if __name__ == "__main__":
  main(sys.argv)
