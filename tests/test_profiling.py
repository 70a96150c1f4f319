"""config.profile_steps: a jax.profiler trace of whole train calls in WORKDIR/profile/."""
import gzip

import pytest
from conftest import tiny_config

from cifar_jax.errors import UserError
from cifar_jax.training import loop, profiling


def test_a_run_traces_the_calls_that_take_the_chosen_steps(tmp_path):
  # 3 steps per call: calls take steps 1-3 and 4-6; steps 4 to 5 are in the second call alone,
  # which leaves the first call's compilation out of the trace.
  config = tiny_config(**{'max_steps': 6, 'profile_steps': (4, 5)})
  loop.train_and_evaluate(config, str(tmp_path))
  profile = tmp_path / profiling.DIRECTORY
  (xplane,) = profile.rglob('*.xplane.pb')  # What XProf and TensorBoard read.
  (perfetto,) = profile.rglob('perfetto_trace.json.gz')
  assert xplane.parent == perfetto.parent
  with gzip.open(perfetto) as f:
    assert b'train_steps' in f.read()  # The train function ran inside it.
  # A run without `profile_steps` writes none: see test_loop.test_workdir_outputs.


@pytest.mark.parametrize('steps', [(0, 3), (5, 4), (3,), (1.5, 2), 'all'])
def test_bad_profile_steps_are_refused(steps):
  with pytest.raises(UserError, match='config.profile_steps'):
    profiling.check_config(steps)
  profiling.check_config(())  # Off.
  profiling.check_config((7, 7))
