"""FIR resampling against a direct NumPy computation of the same definitions."""

import jax.numpy as jnp
import numpy as np
import pytest

from sde_jax.models import resample


def numpy_upfirdn(x, k, up, down, pad0, pad1):
  """Loops over the definition: zero-insert, pad/crop, true 2-D convolution, decimate."""
  n, h, w, c = x.shape
  z = np.zeros((n, h * up, w * up, c))
  z[:, ::up, ::up] = x
  size = lambda length: length + pad0 + pad1
  p = np.zeros((n, size(h * up), size(w * up), c))
  src0, dst0 = max(-pad0, 0), max(pad0, 0)
  hh = min(h * up - src0, size(h * up) - dst0) - max(-pad1, 0) * 0
  ww = min(w * up - src0, size(w * up) - dst0)
  p[:, dst0:dst0 + hh, dst0:dst0 + ww] = z[:, src0:src0 + hh, src0:src0 + ww]
  kh = k.shape[0]
  out_h, out_w = p.shape[1] - kh + 1, p.shape[2] - kh + 1
  out = np.zeros((n, out_h, out_w, c))
  for i in range(out_h):
    for j in range(out_w):
      for a in range(kh):
        for b in range(kh):
          out[:, i, j] += p[:, i + a, j + b] * k[kh - 1 - a, kh - 1 - b]
  return out[:, ::down, ::down]


@pytest.mark.parametrize('up, down, pad0, pad1', [
    (1, 1, 0, 0), (2, 1, 2, 1), (1, 2, 1, 1), (2, 2, 1, 2), (1, 1, 1, -1), (3, 1, 0, 2)])
def test_upfirdn2d_matches_definition(up, down, pad0, pad1):
  rng = np.random.default_rng(up * 10 + down)
  x = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
  k = rng.normal(size=(4, 4)).astype(np.float32)  # asymmetric: catches a missing flip
  out = resample.upfirdn2d(jnp.asarray(x), k, up, down, pad0, pad1)
  np.testing.assert_allclose(out, numpy_upfirdn(x, k, up, down, pad0, pad1), atol=1e-5)


def test_up_and_down_sampling_keep_constants_and_shapes():
  x = jnp.full((1, 8, 8, 2), 3.0)
  up = resample.upsample_2d(x, (1, 3, 3, 1))
  down = resample.downsample_2d(x, (1, 3, 3, 1))
  assert up.shape == (1, 16, 16, 2) and down.shape == (1, 4, 4, 2)
  # Away from the zero-padded border the FIR filters preserve a constant image.
  np.testing.assert_allclose(up[:, 2:-2, 2:-2], 3.0, rtol=1e-6)
  np.testing.assert_allclose(down[:, 1:-1, 1:-1], 3.0, rtol=1e-6)


def numpy_upsample_then_conv(x, w, stride):
  """Zero-insertion upsampling, then a fully padded correlation with w (HWIO)."""
  n, h, wd, _ = x.shape
  k = w.shape[0]
  size = lambda m: (m - 1) * stride + 1 + 2 * (k - 1)
  z = np.zeros((n, size(h), size(wd), x.shape[3]))
  z[:, k - 1:k - 1 + (h - 1) * stride + 1:stride, k - 1:k - 1 + (wd - 1) * stride + 1:stride] = x
  out_h, out_w = z.shape[1] - k + 1, z.shape[2] - k + 1
  out = np.zeros((n, out_h, out_w, w.shape[3]))
  for i in range(out_h):
    for j in range(out_w):
      out[:, i, j] = np.einsum('nabc,abco->no', z[:, i:i + k, j:j + k], w)
  return out


def test_upsample_conv_is_transposed_conv_then_fir():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 5, 3)).astype(np.float32)
  w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  fk = resample.fir_filter((1, 3, 3, 1)) * 4
  expected = numpy_upfirdn(numpy_upsample_then_conv(x, w, 2), fk, 1, 1, 1, 1)
  out = resample.upsample_conv_2d(jnp.asarray(x), jnp.asarray(w), (1, 3, 3, 1))
  assert out.shape == (2, 10, 10, 4)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_conv_downsample_is_fir_then_strided_conv():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  w = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
  smooth = numpy_upfirdn(x, resample.fir_filter((1, 3, 3, 1)), 1, 1, 2, 2)
  expected = np.zeros((2, 4, 4, 4))
  for i in range(4):
    for j in range(4):
      expected[:, i, j] = np.einsum('nabc,abco->no', smooth[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3], w)
  out = resample.conv_downsample_2d(jnp.asarray(x), jnp.asarray(w), (1, 3, 3, 1))
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_naive_resampling():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(resample.naive_downsample_2d(resample.naive_upsample_2d(x)), x)
  np.testing.assert_allclose(resample.naive_downsample_2d(x)[0, 0, 0, 0], (0 + 1 + 4 + 5) / 4)
