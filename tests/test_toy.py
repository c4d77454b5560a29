"""End to end: an MLP trained with get_loss_fn on eight Gaussians; its samples land on the modes."""

import json
import os

import numpy as np

from configs import toy_2d
from sde_jax.jobs import toy
from sde_jax import workdir as workdir_lib


def test_toy_job_trains_and_samples_on_modes(tmp_path):
  """1500 Adam steps (about 20 s on 2 cores), then PC and ODE samples and the likelihood.

  Modes have std 0.1 and sit 1.53 apart, so "on a mode" (within 3 std) is unambiguous. With 1000
  samples, a mode weight's standard error is sqrt(1/8 * 7/8 / 1000) = 0.010; we allow 0.04
  (4 SE) for sampling noise plus model error. Exact data puts 98.9% of its mass within 3 std
  (chi-square, 2 dof); we ask 85% of a 1500-step model.
  """
  config = toy_2d.get_config()
  config.training.n_iters = 1500
  config.eval.num_samples = 1000
  config.eval.num_likelihood = 200
  results = toy.run_toy(config, str(tmp_path), progress=False)
  for name in ('configured', 'ode'):
    r = results[name]
    assert r['fraction_on_modes'] > 0.85, (name, r)
    np.testing.assert_allclose(r['mode_weights'], 1 / 8, atol=0.04)
    # Sliced W2 to held-out data no worse than twice the data-vs-data noise floor.
    assert r['sliced_wasserstein'] < 2 * results['reference_sliced_wasserstein'], (name, r)
  assert results['configured']['nfe'] == 1000  # Euler–Maruyama, no corrector, N = 1000
  lik = results['likelihood']
  assert abs(lik['nll_nats_per_dim'] - lik['true_nll_nats_per_dim']) < 0.25, lik
  for f in toy.OUTPUTS:
    assert os.path.getsize(tmp_path / f) > 0
  report = json.loads((tmp_path / 'report.json').read_text())
  assert report['history'][-1]['step'] == 1500
  assert '| ode |' in (tmp_path / 'report.md').read_text()


def test_earlier_outputs_are_kept(tmp_path):
  for f in toy.OUTPUTS:
    (tmp_path / f).write_text(f'old {f}')
  workdir_lib.output_folder(str(tmp_path), '', toy.OUTPUTS)  # what run_toy calls first
  backups = [d for d in os.listdir(tmp_path) if d.startswith('previous-')]
  assert len(backups) == 1
  for f in toy.OUTPUTS:
    assert not (tmp_path / f).exists()
    assert (tmp_path / backups[0] / f).read_text() == f'old {f}'
