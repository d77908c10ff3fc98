"""Row-sharded method state (`jaxssl.methods.rows`): reads and writes by
dataset index on 1, 3 and 8 devices against numpy, several rounds when the
buckets overflow, duplicates, range errors, and a checkpoint restored onto
another device count."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
import numpy as np
import pytest

import mesh_runs
from jaxssl import checkpointing
from jaxssl import sharding
from jaxssl.methods import rows
from jaxssl.train_state import TrainState

N, D = 37, 3  # 37 rows: no device count here divides it
DATA = sharding.DATA_AXIS


def _table(seed=0):
  return np.random.default_rng(seed).normal(size=(N, D))


def _requests(devices, m, seed, skew=False):
  """`[devices·m]` indices, duplicates included; `skew`: every request
  goes to the first rows (one owner), so buckets overflow."""
  rng = np.random.default_rng(seed)
  high = 4 if skew else N
  return rng.integers(0, high, devices * m).astype(np.int32)


def _run(fn, devices, table, *args):
  """`fn(table_block, *local_args)` under shard_map on `devices` devices
  (the table padded and row-sharded), or plainly on the whole table."""
  if devices == 1:
    return np.asarray(fn(jnp.asarray(table), *map(jnp.asarray, args),
                         axis_name=None))
  mesh = sharding.data_mesh(jax.devices()[:devices])
  padded = rows.pad(jnp.asarray(table), devices)
  mapped = jax.jit(jax.shard_map(
      functools.partial(fn, axis_name=DATA), mesh=mesh,
      in_specs=(P(DATA),) + (P(DATA),) * len(args), out_specs=P(DATA)))
  return np.asarray(mapped(padded, *map(jnp.asarray, args)))


@pytest.mark.parametrize("devices", [1, 3, 8])
@pytest.mark.parametrize("skew,capacity", [(False, None), (True, 2)])
@mesh_runs.float64()
def test_read_rows_equals_numpy(devices, skew, capacity):
  """Every device's requests come back in order, duplicates and other
  devices' rows included; with every request on one owner and buckets of
  2, the rounds continue until all are served."""
  table = _table()
  m = 10
  idx = _requests(devices, m, seed=devices, skew=skew)
  read = functools.partial(rows.read_rows, num_rows=N, capacity=capacity)
  got = _run(read, devices, table, idx)
  np.testing.assert_array_equal(got, table[idx])


@pytest.mark.parametrize("devices", [1, 3, 8])
@mesh_runs.float64()
def test_write_rows_last_in_the_global_batch_wins(devices):
  """Writes land on the owners; a row written several times in one call
  holds the value of its last occurrence in the global batch (numpy's
  sequential assignment), on any device count, also over several rounds;
  the padding and unwritten rows do not change."""
  table = _table(1)
  m = 12
  idx = _requests(devices, m, seed=10 + devices, skew=True)
  idx[::5] = np.arange(N)[-len(idx[::5]):]  # some rows of the last blocks
  values = np.random.default_rng(2).normal(size=(devices * m, D))
  want = table.copy()
  for i, v in zip(idx, values):
    want[i] = v
  write = functools.partial(rows.write_rows, num_rows=N, capacity=3)
  got = _run(write, devices, table, idx, values)
  np.testing.assert_array_equal(got[:N], want)
  np.testing.assert_array_equal(got[N:], 0.0)


@mesh_runs.float64()
def test_write_priority_decides_between_duplicates():
  """An explicit priority overrides the batch order."""
  table = _table(3)
  idx = np.array([5, 5, 7, 5], np.int32)
  values = np.arange(4 * D, dtype=np.float64).reshape(4, D)
  priority = np.array([3, 9, 0, 1], np.int32)
  def write(t, i, v, p, axis_name):
    return rows.write_rows(t, i, v, num_rows=N, axis_name=axis_name,
                           priority=p)

  got = _run(write, 1, table, idx, values, priority)
  np.testing.assert_array_equal(got[5], values[1])
  np.testing.assert_array_equal(got[7], values[2])


def test_out_of_range_indices_are_an_error():
  table = _table()
  for fn, args in ((rows.read_rows, ()), (rows.write_rows, (np.zeros((2, D)),))):
    with pytest.raises(Exception, match=r"row index 37 is outside \[0, 37\)"):
      _run(functools.partial(fn, num_rows=N), 1, table,
           np.array([3, 37], np.int32), *args)


def test_padded_rows_and_pad():
  assert [rows.padded_rows(N, d) for d in (1, 3, 8, 37, 40)] == [
      37, 39, 40, 37, 40]
  assert rows.pad(jnp.ones((5, 2)), 4).shape == (8, 2)
  with pytest.raises(ValueError, match="num_rows > 0"):
    rows.padded_rows(0, 8)


def _state(bank, mesh):
  """A minimal TrainState whose method state is a row-sharded bank."""
  def put(x, spec):
    return jax.device_put(jnp.asarray(x), NamedSharding(mesh, spec))

  return TrainState(
      step=put(np.int32(4), P()), params={"w": put(np.ones(3), P())},
      batch_stats={}, opt_state=(), rng=jax.device_put(
          jax.random.key(0), NamedSharding(mesh, P())),
      target=None, method_state={"bank": put(bank, P(DATA)),
                                 "z": put(np.float32(2.5), P())},
      probe=None)


def test_checkpoint_restores_a_bank_onto_another_device_count(tmp_path):
  """Saved on 8 devices (40 rows: 3 of padding), restored on 3 (39 rows)
  and on 1 (37): the 37 rows and everything else come back exactly; a
  replicated array of another shape is still an error."""
  bank = _table(4).astype(np.float32)
  mesh8 = sharding.data_mesh(jax.devices()[:8])
  saved = _state(rows.pad(jnp.asarray(bank), 8), mesh8)
  ckpt = checkpointing.Checkpointer(tmp_path / "ckpt", every_steps=1,
                                    asynchronous=False)
  ckpt.save(saved, force=True)
  ckpt.wait()
  for devices in (3, 1):
    mesh = sharding.data_mesh(jax.devices()[:devices])
    template = _state(np.zeros((rows.padded_rows(N, devices), D),
                               np.float32), mesh)
    restored = checkpointing.Checkpointer(
        tmp_path / "ckpt", every_steps=1).restore(template)
    got = restored.method_state["bank"]
    assert got.shape == (rows.padded_rows(N, devices), D)
    assert got.sharding.spec == P(DATA)
    np.testing.assert_array_equal(np.asarray(got)[:N], bank)
    assert float(restored.method_state["z"]) == 2.5
    assert int(restored.step) == 4
  wrong = _state(np.zeros((39, D), np.float32), sharding.data_mesh(
      jax.devices()[:3])).replace(params={"w": jnp.ones(4)})
  with pytest.raises(ValueError, match="no readable checkpoint"):
    checkpointing.Checkpointer(tmp_path / "ckpt", every_steps=1).restore(
        wrong)
