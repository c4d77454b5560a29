"""Whether two checkouts compile a config's network to the same XLA program.

For each config, the forward pass and the gradient of ``mean(out^2)`` of ``get_model(config)`` at
batch 1 are compiled for this machine and their optimized HLO is fingerprinted, with source
locations (file names, lines, stack frames) left out. Run it once per checkout and compare:
equal fingerprints mean the float32 programs are the same instruction for instruction, so a
change (e.g. the mixed-precision casts of ``model.dtype``) cannot have changed their speed.

  python bench/hlo_identity.py ROOT_OF_CHECKOUT CONFIG [CONFIG ...]
"""

from __future__ import annotations

import hashlib
import importlib.util
import pathlib
import re
import sys


def fingerprint(hlo_text: str) -> str:
  """sha256 of the instructions of an HLO module, without source locations."""
  lines = [re.sub(r',? ?(stack_frame_id=\d+|metadata=\{[^}]*\})', '', line)
           for line in hlo_text.split('\n') if '=' in line and ('%' in line or 'ROOT' in line)]
  return hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16]


def main(root: pathlib.Path, configs: list[str]) -> None:
  sys.path.insert(0, str(root))
  import jax  # pylint: disable=g-import-not-at-top  (after the checkout is on the path)
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sde_jax import models  # pylint: disable=g-import-not-at-top

  for relative in configs:
    spec = importlib.util.spec_from_file_location('config', root / 'configs' / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    model = models.get_model(config)
    shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
    params = jax.eval_shape(lambda k, m=model, s=shape: models.init_params(m, k, s),
                            jax.random.key(0))
    loss = lambda p, x, y, m=model: jnp.mean(m.apply({'params': p}, x, y, train=False) ** 2)  # noqa: E731
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.float32)
    for name, fn in (('forward', loss), ('gradient', jax.grad(loss))):
      text = jax.jit(fn).lower(params, x, y).compile().as_text()
      print(f'{relative} {name} {fingerprint(text)}', flush=True)


if __name__ == '__main__':
  main(pathlib.Path(sys.argv[1]).resolve(), sys.argv[2:])
