"""Row-sharded method state: one row per training example, split over the
data axis (InstDisc's and CMC's memory banks).

Layout. A table of N rows (N = the training set's size, `num_examples`,
the rows' DATASET indices `batch['index']`) is a global `[N_pad, ...]`
array, N_pad = `padded_rows(N, D)` = ⌈N / D⌉·D on D devices, sharded by
rows (`PartitionSpec('data')`): device d holds the contiguous block
[d·R, (d + 1)·R), R = N_pad / D. Row i sits at position i for every D;
only the padding rows [N, N_pad) at the end, never read, depend on D, so
a checkpoint restores onto another device count
(`jaxssl.checkpointing` adds or cuts the padding).

Communication. `read_rows` and `write_rows` run inside `shard_map`: each
device sends every request to the device owning its row with
`lax.all_to_all`, in buckets of `capacity` requests per (sender, owner)
pair, and the owners send the rows back with a second `all_to_all`. A
device so moves about its own requests' rows (D·capacity per round),
never the global batch's: the naive all-gather of every device's requests
plus a reduce-scatter of the rows moves D times more (InstDisc at global
batch 256, K = 4096, d = 128 float32 on 8 devices: 537 MB of requested
rows in all, 67 MB per device here against 537 MB gathered on every
device; at batch 4096, 1.1 GB against 8.6 GB). Requests beyond a bucket's
capacity wait for the next round (a `while_loop` until every device is
served); the default capacity, 1.25·m/D + 16 for m requests per device,
serves uniform requests (random noise rows, a shuffled batch's indices)
in one round with overwhelming probability.

Duplicates: a read of the same row twice returns it twice; when one
`write_rows` call holds the same row several times, the request with the
highest `priority` wins (default: the later one in the global batch,
device-major), whatever the device count.

Out-of-range indices (outside [0, N)) are an error raised from the step
(a host check of the indices).
"""

from __future__ import annotations

from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def padded_rows(num_rows: int, num_shards: int) -> int:
  """Rows of a table of `num_rows` on `num_shards` devices: the smallest
  multiple of `num_shards` not below `num_rows`."""
  if num_rows <= 0 or num_shards <= 0:
    raise ValueError(f"a row-sharded table needs num_rows > 0 and "
                     f"num_shards > 0; got {num_rows} and {num_shards}")
  return -(-num_rows // num_shards) * num_shards


def pad(rows: jax.Array, num_shards: int) -> jax.Array:
  """`rows` `[N, ...]` with zero rows appended up to `padded_rows`."""
  extra = padded_rows(rows.shape[0], num_shards) - rows.shape[0]
  return jnp.pad(rows, [(0, extra)] + [(0, 0)] * (rows.ndim - 1))


def check_indices(indices: jax.Array, num_rows: int, what: str) -> None:
  """Raises (from the running step, through a host callback) when an index
  lies outside [0, num_rows), naming `what` and the first offender."""
  def check(idx):
    idx = np.asarray(idx)
    bad = idx[(idx < 0) | (idx >= num_rows)]
    if bad.size:
      raise ValueError(f"{what}: row index {int(bad.flat[0])} is outside "
                       f"[0, {num_rows}) ({bad.size} such in this batch)")
  jax.debug.callback(check, indices)


def default_capacity(num_requests: int, num_shards: int) -> int:
  """Requests per (sender, owner) bucket and round: 1.25·m/D + 16, at most
  m."""
  return min(num_requests, int(1.25 * num_requests / num_shards) + 16)


def _buckets(owner: jax.Array, pending: jax.Array, num_shards: int,
             capacity: int):
  """Each pending request's (owner, rank among the pending requests of its
  owner); `sent`: whether its rank is below `capacity`."""
  key = jnp.where(pending, owner, num_shards)  # served ones sort last
  order = jnp.argsort(key, stable=True)
  sorted_key = key[order]
  first = jnp.searchsorted(sorted_key, sorted_key, side="left")
  rank_sorted = jnp.arange(key.shape[0]) - first
  rank = jnp.zeros_like(rank_sorted).at[order].set(rank_sorted)
  return rank, pending & (rank < capacity)


def _exchange(table: jax.Array, slots: jax.Array, owner: jax.Array,
              pending: jax.Array, axis_name: str, capacity: int):
  """One round of reads: `(rows [m, ...] for the requests sent, sent)`."""
  num_shards = lax.axis_size(axis_name)
  rank, sent = _buckets(owner, pending, num_shards, capacity)
  dest = jnp.where(sent, owner, num_shards)  # dropped when not sent
  request = jnp.full((num_shards, capacity), -1, slots.dtype)
  request = request.at[dest, rank].set(slots, mode="drop")
  incoming = lax.all_to_all(request, axis_name, 0, 0, tiled=False)
  rows = table[jnp.maximum(incoming, 0)]  # [D, capacity, ...]
  back = lax.all_to_all(rows, axis_name, 0, 0, tiled=False)
  return back[jnp.minimum(owner, num_shards - 1),
              jnp.minimum(rank, capacity - 1)], sent


def read_rows(table: jax.Array, indices: jax.Array, *, num_rows: int,
              axis_name: Optional[str], capacity: Optional[int] = None,
              check: bool = True) -> jax.Array:
  """The rows `table[indices]` of a row-sharded table.

  Args:
    table: this device's block `[R, ...]` of the table (the whole
      `[N_pad, ...]` table without an axis).
    indices: `[m]` int32 dataset indices this device asks for (any
      device's rows, duplicates allowed).
    num_rows: N, the table's rows before padding.
    axis_name: the data axis (None: one device, a plain gather).
    capacity: requests per (sender, owner) bucket and round; None:
      `default_capacity`.
    check: raise from the step on an index outside [0, N) (`check_indices`;
      off for indices drawn in range).

  Returns:
    `[m, ...]` the requested rows, in request order.
  """
  if indices.ndim != 1:
    raise ValueError(f"read_rows takes [m] indices; got {indices.shape}")
  if check:
    check_indices(indices, num_rows, "read_rows")
  if axis_name is None:
    return table[indices]
  num_shards = lax.axis_size(axis_name)
  block = table.shape[0]
  capacity = capacity or default_capacity(indices.shape[0], num_shards)
  owner, slots = indices // block, indices % block
  out = jnp.zeros(indices.shape + table.shape[1:], table.dtype)

  def more(carry):
    _, pending = carry
    return lax.psum(jnp.sum(pending.astype(jnp.int32)), axis_name) > 0

  def round_(carry):
    out, pending = carry
    rows, sent = _exchange(table, slots, owner, pending, axis_name, capacity)
    mask = sent.reshape(sent.shape + (1,) * (table.ndim - 1))
    return jnp.where(mask, rows, out), pending & ~sent

  pending = jnp.ones(indices.shape, bool)
  out, _ = lax.while_loop(more, round_,
                          _varying((out, pending), axis_name))
  return out


def write_rows(table: jax.Array, indices: jax.Array, values: jax.Array, *,
               num_rows: int, axis_name: Optional[str],
               priority: Optional[jax.Array] = None,
               capacity: Optional[int] = None,
               check: bool = True) -> jax.Array:
  """`table` with `table[indices[j]] = values[j]` written on the rows'
  owners.

  Args:
    table: this device's block `[R, ...]` (the whole table without axis).
    indices: `[m]` int32 dataset indices (checked to lie in [0, N)).
    values: `[m, ...]` the new rows.
    num_rows: N.
    axis_name: the data axis, or None.
    priority: `[m]` int32, distinct over the global call: where a row is
      written more than once, the highest priority wins. None: the
      request's position in the global batch (device · m + j), so the
      later example wins on any device count.
    capacity: as `read_rows`.
    check: as `read_rows` (off where another call checks the same
      indices in the step).

  Returns:
    This device's updated block.
  """
  if indices.ndim != 1 or values.shape[:1] != indices.shape:
    raise ValueError(f"write_rows takes [m] indices and [m, ...] values; "
                     f"got {indices.shape} and {values.shape}")
  if check:
    check_indices(indices, num_rows, "write_rows")
  m = indices.shape[0]
  device = 0 if axis_name is None else lax.axis_index(axis_name)
  if priority is None:
    priority = device * m + jnp.arange(m, dtype=jnp.int32)
  values = values.astype(table.dtype)
  if axis_name is None:
    return _apply(table, indices, values, priority,
                  jnp.full(table.shape[:1], -1, jnp.int32))[0]
  num_shards = lax.axis_size(axis_name)
  block = table.shape[0]
  capacity = capacity or default_capacity(m, num_shards)
  owner, slots = indices // block, indices % block

  def more(carry):
    return lax.psum(jnp.sum(carry[2].astype(jnp.int32)), axis_name) > 0

  def round_(carry):
    table, best, pending = carry
    rank, sent = _buckets(owner, pending, num_shards, capacity)
    dest = jnp.where(sent, owner, num_shards)
    at = (dest, rank)

    def bucket(x, fill):
      out = jnp.full((num_shards, capacity) + x.shape[1:], fill, x.dtype)
      return lax.all_to_all(out.at[at].set(x, mode="drop"), axis_name, 0, 0,
                            tiled=False)

    got_slots = bucket(slots, -1).reshape(-1)
    got_priority = bucket(priority, -1).reshape(-1)
    got_values = bucket(values, 0).reshape((-1,) + values.shape[1:])
    table, best = _apply(table, got_slots, got_values, got_priority, best)
    return table, best, pending & ~sent

  best = jnp.full(table.shape[:1], -1, jnp.int32)
  pending = jnp.ones((m,), bool)
  table, _, _ = lax.while_loop(more, round_,
                               (table, *_varying((best, pending), axis_name)))
  return table


def _varying(tree, axis_name: str):
  """Constants made device-varying: a `while_loop` carry inside
  `shard_map` must keep one type, and the rounds make it varying."""
  return jax.tree.map(lambda x: lax.pcast(x, axis_name, to="varying"), tree)


def _apply(table, slots, values, priority, best):
  """Writes the requests whose priority beats every other request for the
  same slot (this round's and earlier rounds', `best`); slot −1: none."""
  valid = slots >= 0
  safe = jnp.where(valid, slots, table.shape[0])  # out of bounds: dropped
  best = best.at[safe].max(jnp.where(valid, priority, -1), mode="drop")
  wins = valid & (priority == best[jnp.minimum(safe, table.shape[0] - 1)])
  table = table.at[jnp.where(wins, slots, table.shape[0])].set(
      values, mode="drop")
  return table, best
