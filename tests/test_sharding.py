"""Data-parallel training: 4 forced host devices give 1-device accuracies.

The multi-device run happens in a subprocess, since the device count is fixed
when JAX starts (``XLA_FLAGS=--xla_force_host_platform_device_count=4``).
"""

import json
import os
import subprocess
import sys

import jax
import pytest

from sparcl_jax.errors import ConfigError
from sparcl_jax.training import config as config_lib
from sparcl_jax.training import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "configs", "quickstart.cfg")

# Runs the quickstart (2 tasks, 1 epoch) on 1 and on 4 devices, recording
# the sharding XLA gives every batch array the train step constrains.
_PROBE = r"""
import json, sys
import jax
from sparcl_jax.training import cli, config as config_lib, loop, sharding
from sparcl_jax.training import run_state

seen = []
original = sharding.constrain_batch

def spy(tree, batch_sharding):
  out = original(tree, batch_sharding)
  if batch_sharding is not None:
    for leaf in jax.tree.leaves(out):
      jax.debug.inspect_array_sharding(
          leaf, callback=lambda s, shape=leaf.shape: seen.append(
              [str(s.spec), len(s.device_set), list(shape),
               list(s.shard_shape(shape))]))
  return out

sharding.constrain_batch = spy
base = cli.parse_config(["train.py", "--flagfile=" + sys.argv[1],
                         "--workdir=" + sys.argv[2], "--epochs=1",
                         "--num_tasks=2"])
scenario = run_state.build_scenario(base)
out = {"devices": jax.device_count(), "seen": seen}
for n in (1, 4):
  results = loop.run(config_lib.replace(base, num_devices=n),
                     scenario=scenario)
  out[str(n)] = results
print("RESULT " + json.dumps(out))
"""


def test_four_devices_match_one_device_and_shard_the_batch(tmp_path):
  script = tmp_path / "probe.py"
  script.write_text(_PROBE)
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, str(script), QUICKSTART, str(tmp_path / "run")],
      capture_output=True, text=True, timeout=400, cwd=REPO, env=env,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][0]
  out = json.loads(line[len("RESULT "):])
  assert out["devices"] == 4
  one, four = out["1"], out["4"]
  for kind in ("class_il", "task_il"):
    for a, b in zip(one["acc_matrix"][kind][-1], four["acc_matrix"][kind][-1]):
      assert abs(a - b) <= 0.5
    assert abs(one["final"][kind] - four["final"][kind]) <= 0.5
  assert one["train_flops"] == four["train_flops"]
  assert four["flags"]["num_devices"] == 4
  # The batch indices, task ids, images and labels of the stream (16) and
  # the two replay batches (16 each) are split 4 ways along 'data'; the
  # 1-device run constrains nothing.
  seen = out["seen"]
  assert len(seen) >= 4
  shapes = {tuple(s[2]) for s in seen}
  assert (16,) in shapes and (16, 8, 8, 1) in shapes
  for spec, num_devices, shape, shard in seen:
    assert spec in ("P('data',)", "PartitionSpec('data',)")
    assert num_devices == 4
    assert shard == [shape[0] // 4] + shape[1:]


def test_one_device_builds_no_mesh_and_leaves_arrays_alone():
  assert sharding.make_mesh(1, 32) is None
  tree = {"w": jax.numpy.ones(3)}
  assert sharding.replicate(tree, None) is tree
  assert sharding.constrain_batch(tree, None) is tree
  assert sharding.initialize_distributed("", 1, 0) is False
  assert sharding.is_primary()


def test_too_many_devices_is_a_config_error():
  count = jax.device_count()
  with pytest.raises(ConfigError, match=f"--num_devices={count + 1} but only "
                     f"{count}"):
    sharding.make_mesh(count + 1, 64)


@pytest.mark.parametrize("changes,fragment", [
    ({"num_devices": 3, "batch_size": 32}, "--batch_size=32 cannot be split "
     "evenly over --num_devices=3"),
    ({"num_devices": 4, "batch_size": 32, "minibatch_size": 10},
     "the replay mini-batch (10) cannot be split"),
    ({"num_devices": -1}, "--num_devices=-1 must be at least 0"),
    ({"checkpoint_every_steps": -5}, "--checkpoint_every_steps=-5 must be"),
    ({"num_processes": 2}, "needs --coordinator_address"),
    ({"process_id": 3, "num_processes": 2,
      "coordinator_address": "h:1"}, "--process_id=3 must be in"),
])
def test_scale_out_flags_are_validated(changes, fragment):
  config = config_lib.RunConfig(workdir="/tmp/unused", **changes)
  with pytest.raises(ConfigError) as err:
    config_lib.validate(config)
  assert fragment in str(err.value)
