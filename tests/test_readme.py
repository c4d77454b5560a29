"""README.md's "Quick start (Python)" block runs, and every number its comments quote is what it
computes.

The block is read from README.md (not copied here) and executed. Its comments quote results as
``expression = value`` (e.g. ``x.std() = 0.506``): each expression is evaluated in the block's
namespace and must round to the value at the precision quoted. The other numbers of the comments
are checked one by one below, and a number the comments gain without a check fails the test.
"""

import math
import pathlib
import re
import time

import numpy as np
import pytest

from sde_jax import likelihood

README = pathlib.Path(__file__).parent.parent / 'README.md'
NUMBER = r'-?\d+(?:\.\d+)?'
# ``expression = number``: a name or call, optionally combined with + - * / and a number or call.
TERM = rf'(?:[A-Za-z_][\w.]*(?:\([^()]*\))?|{NUMBER})'
CLAIM = re.compile(rf'({TERM}(?:\s*[-+*/]\s*{TERM})*)\s*=\s*({NUMBER})')


def quick_start_block() -> str:
  text = README.read_text()
  section = text.split('## Quick start (Python)', 1)[1]
  match = re.search(r'```python\n(.*?)```', section, re.DOTALL)
  assert match, 'no ```python block under "## Quick start (Python)"'
  return match.group(1)


def comments(code: str) -> list[str]:
  return [line.split('#', 1)[1] for line in code.splitlines() if '#' in line]


def numbers(text: str) -> list[str]:
  return re.findall(rf'(?<![\w.]){NUMBER}', text)


def assert_rounds_to(actual: float, quoted: str, what: str):
  """``actual`` shown with the decimals of ``quoted`` is ``quoted``."""
  decimals = len(quoted.split('.')[1]) if '.' in quoted else 0
  assert abs(actual - float(quoted)) <= 0.5 * 10**-decimals + 1e-9, (
      f'README quotes {what} = {quoted}; the block gives {actual:.{decimals + 3}f}')


@pytest.fixture(scope='module')
def executed():
  """The block's namespace after running it, and the inverse scaler it gave the likelihood."""
  scalers = []
  get_likelihood_fn = likelihood.get_likelihood_fn

  def recording(*args, **kwargs):
    scalers.append(kwargs.get('inverse_scaler', args[1] if len(args) > 1 else None))
    return get_likelihood_fn(*args, **kwargs)

  namespace = {}
  with pytest.MonkeyPatch.context() as monkeypatch:
    monkeypatch.setattr(likelihood, 'get_likelihood_fn', recording)
    start = time.perf_counter()
    exec(compile(quick_start_block(), f'{README}:quick-start', 'exec'), namespace)  # pylint: disable=exec-used
    seconds = time.perf_counter() - start
  print(f'README quick start: {seconds:.1f} s')
  assert len(scalers) == 1
  return namespace, scalers[0]


def test_quoted_results(executed):
  namespace, inverse_scaler = executed
  claims = [CLAIM.findall(c) for c in comments(quick_start_block())]
  claims = [claim for line in claims for claim in line]
  # The block quotes its samplers' spread and NFE, the ODE's, and the likelihood's numbers.
  assert len(claims) >= 6, claims
  scope = {**namespace, 'inverse_scaler': inverse_scaler}
  for expression, quoted in claims:
    assert_rounds_to(float(eval(expression, scope)), quoted, expression)  # pylint: disable=eval-used


GAUSSIAN = re.compile(rf'N\(({NUMBER}), ({NUMBER})(?: I)?\)')
ENTROPY = re.compile(rf'entropy of N\(0, ({NUMBER})\), ({NUMBER}) bits/dim')


def test_data_distribution(executed):
  """Each ``N(mean, variance)`` the comments name (the data) is what the samplers draw: mean and
  variance of the PC and ODE samples within 4 standard errors (Gaussian: ``sqrt(v / n)`` and
  ``v sqrt(2 / n)`` over the n = 1024 coordinates)."""
  namespace, _ = executed
  mentions = GAUSSIAN.findall(' '.join(comments(quick_start_block())))
  assert mentions
  for mean, variance in mentions:
    mean, variance = float(mean), float(variance)
    for name in ('x', 'x_ode'):
      x = np.asarray(namespace[name], np.float64).ravel()
      assert abs(x.mean() - mean) < 4 * math.sqrt(variance / x.size), name
      assert abs(x.var() - variance) < 4 * variance * math.sqrt(2 / x.size), name


def test_entropy_and_offset(executed):
  """``the entropy of N(0, 0.25), 1.05 bits/dim, plus the ... offset 8``: the entropy in closed
  form, and the mean bits/dim of the 512 ODE samples is that plus 8 within 4 standard errors."""
  namespace, _ = executed
  match = ENTROPY.search(' '.join(comments(quick_start_block())))
  assert match
  entropy = 0.5 * math.log2(2 * math.pi * math.e * float(match.group(1)))
  assert_rounds_to(entropy, match.group(2), 'the entropy')
  bpd = np.asarray(namespace['bpd'], np.float64)
  assert abs(bpd.mean() - (entropy + 8)) < 4 * bpd.std(ddof=1) / math.sqrt(bpd.size)


def test_every_quoted_number_is_checked():
  """The numbers of the comments are those of the ``expression = value`` claims, of the
  ``N(mean, variance)`` mentions and of the entropy sentence, besides the words '2-D' and '8-bit'
  (no results). Any other fails here, so that a number added to the comments gets a check."""
  text = ' '.join(comments(quick_start_block()))
  found = numbers(re.sub(r'\b2-D\b|\b8-bit\b', '', text))
  checked = []
  for expression, quoted in CLAIM.findall(text):
    checked += numbers(expression) + [quoted]
  for mean, variance in GAUSSIAN.findall(text):
    checked += [mean, variance]
  checked.append(ENTROPY.search(text).group(2))  # its variance is a N(0, v) mention
  assert sorted(found) == sorted(checked), (found, checked)
