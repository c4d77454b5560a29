"""The ``sde-jax`` command line: config flags reach the job, bad input is a clear error."""

from tests.helpers import run_cli, tiny_flags


def test_toy_command_with_overrides(tmp_path):
  tiny = tiny_flags('toy_2d.py', training=dict(n_iters=20), model=dict(num_scales=50),
                    eval=dict(num_samples=64, num_likelihood=16))
  proc = run_cli('toy', *tiny, f'--workdir={tmp_path}', '--config.training.sde=subvpsde',
                 '--config.data.dataset=rings')
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = (tmp_path / 'report.md').read_text()
  assert 'rings, subvpsde, 20 steps' in report
  assert '| pc (euler_maruyama + none) | 50 |' in report  # N = 50 steps, one evaluation each
  assert (tmp_path / 'samples.png').stat().st_size > 0


def test_unknown_command_and_config_field_are_errors(tmp_path):
  proc = run_cli('trian', '--config', 'configs/toy_2d.py', f'--workdir={tmp_path}')
  assert proc.returncode != 0 and "'trian'" in proc.stderr and 'toy' in proc.stderr
  proc = run_cli('toy', '--config', 'configs/toy_2d.py', f'--workdir={tmp_path}',
                 '--config.training.n_iterz=5')
  assert proc.returncode != 0 and 'n_iterz' in proc.stderr
  proc = run_cli('toy', '--config', 'configs/toy_2d.py', f'--workdir={tmp_path}',
                 '--config.data.dataset=cifar10')
  assert proc.returncode != 0 and "'cifar10'" in proc.stderr
  assert not (tmp_path / 'report.md').exists()
