"""Evaluation jobs: eval loss, bits/dim, and samples scored with FID / IS / KID; data-set
statistics for FID. Resumable: every round's result is a file, and a restarted job skips the
rounds whose file exists. See ``docs/evaluation.md``.

``evaluate(config, workdir)`` goes over the checkpoints ``eval.begin_ckpt .. eval.end_ckpt`` of
``workdir``, waiting for those that do not exist yet, as the original's ``run_lib.evaluate`` does.
Checkpoint numbers are the original's: checkpoint ``N`` is the one of step ``N *
training.snapshot_freq`` (a stored step ``s`` has number ``s // snapshot_freq``), except that a
checkpoint imported from the original's ``checkpoint_N`` or ``checkpoint_N.pth`` has the number
``N`` of its file name (:func:`checkpoint_number`).

Files under ``workdir/<eval_folder>/`` (``eval`` by default)::

  config.json                 the settings that the files below depend on (a mismatch is an error)
  ckpt_<N>/checkpoint.json    the stored step that checkpoint N is (another one is an error)
  ckpt_<N>/loss.npz           per-example eval losses
  ckpt_<N>/bpd_<r>.npz        bits/dim of batch ``r % batches`` in pass ``r // batches``
  ckpt_<N>/samples_<r>.npz    uint8 samples ``r * round_size ..`` (+ the sampler's nfe)
  ckpt_<N>/statistics_<r>.npz their Inception ``pool_3`` and ``logits``
  ckpt_<N>/report.json, grid.png
  report.md, report.json      one row per checkpoint evaluated so far

Each file is written to a temporary name and renamed, so a job killed mid-write leaves either
the whole file or none.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import math
import os
import re
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from sde_jax import checkpoints, likelihood, odeint, parallel, rng, sampling, train, viz
from sde_jax import data as data_lib
from sde_jax import sde as sde_lib
from sde_jax.metrics import fid, inception

# Seconds between two looks for a checkpoint that does not exist yet (the original's 60).
WAIT_SECONDS = 60
GRID_SIZE = 64  # samples in a checkpoint's grid.png
# Streams of key(seed + 1) for the losses and bits/dim (the original's eval key is seed + 1).
# Samples use key(seed) itself, as `sde-jax sample` does: eval's sample i is its sample i.
# The original's passes over the bits/dim split when eval.bpd_num_repeats is None.
BPD_REPEATS = {'test': 5, 'train': 1}

Array = jax.Array


# --------------------------------------------------------------------------------------------
# Settings, read from the config once.


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What an evaluation job reads from ``config.eval`` (and ``training.snapshot_freq``)."""

  begin_ckpt: int
  end_ckpt: int
  snapshot_freq: int
  enable_loss: bool
  enable_bpd: bool
  enable_sampling: bool
  num_samples: int
  batch_size: int
  bpd_split: str  # 'train' or 'test'
  bpd_repeats: int
  bpd_solver: str
  bpd_rtol: float
  bpd_atol: float
  inception_weights: str | None
  inception_width: float
  inception_image_size: int
  stats_path: str | None

  @classmethod
  def from_config(cls, config) -> 'EvalSettings':
    """Reads and checks the fields.

    Raises:
      ValueError: naming the field, its value and what it must be.
    """
    ec = config.eval
    split = str(ec.get('bpd_dataset', 'test')).lower()
    if split not in BPD_REPEATS:
      raise ValueError(f"eval.bpd_dataset={ec.bpd_dataset!r}; expected 'train' or 'test'.")
    repeats = ec.get('bpd_num_repeats')
    repeats = BPD_REPEATS[split] if repeats is None else int(repeats)
    settings = cls(
        begin_ckpt=int(ec.begin_ckpt), end_ckpt=int(ec.end_ckpt),
        snapshot_freq=int(config.training.snapshot_freq),
        enable_loss=bool(ec.enable_loss), enable_bpd=bool(ec.enable_bpd),
        enable_sampling=bool(ec.enable_sampling), num_samples=int(ec.num_samples),
        batch_size=int(ec.batch_size), bpd_split=split, bpd_repeats=repeats,
        bpd_solver=str(ec.get('bpd_solver', 'rk45')).lower(),
        bpd_rtol=float(ec.get('bpd_rtol', 1e-5)), bpd_atol=float(ec.get('bpd_atol', 1e-5)),
        inception_weights=ec.get('inception_weights'),
        inception_width=float(ec.get('inception_width', 1.0)),
        inception_image_size=int(ec.get('inception_image_size', inception.IMAGE_SIZE)),
        stats_path=ec.get('stats_path'))
    settings.check()
    return settings

  def check(self) -> None:
    checks = [
        (0 <= self.begin_ckpt <= self.end_ckpt, 'eval.begin_ckpt and eval.end_ckpt',
         f'{self.begin_ckpt}, {self.end_ckpt}', 'integers with 0 <= begin_ckpt <= end_ckpt'),
        (self.snapshot_freq > 0, 'training.snapshot_freq', self.snapshot_freq, 'positive'),
        (self.num_samples >= 2, 'eval.num_samples', self.num_samples,
         'at least 2 (FID needs a covariance)'),
        (self.batch_size > 0, 'eval.batch_size', self.batch_size, 'positive'),
        (self.bpd_repeats > 0, 'eval.bpd_num_repeats', self.bpd_repeats, 'positive (or None)'),
        (self.bpd_rtol > 0 and self.bpd_atol > 0, 'eval.bpd_rtol and eval.bpd_atol',
         f'{self.bpd_rtol}, {self.bpd_atol}', 'positive'),
        (self.bpd_solver in odeint.SOLVERS, 'eval.bpd_solver', repr(self.bpd_solver),
         f'one of {sorted(odeint.SOLVERS)}'),
    ]
    for ok, name, value, expected in checks:
      if not ok:
        raise ValueError(f'{name}={value}; expected {expected}.')


def round_size(settings: EvalSettings, mesh) -> int:
  """Images per sampling round and per data batch: ``eval.batch_size`` rounded up to a
  multiple of the devices (a multiple of the processes too)."""
  return -(-settings.batch_size // mesh.size) * mesh.size


def fingerprint(config, settings: EvalSettings, round_images: int) -> dict[str, dict]:
  """The settings that an eval folder's files depend on, by stage, as JSON values.

  ``common`` always; ``loss``, ``bpd`` and ``sampling`` for the stages that are enabled. Left
  out: the checkpoint range, ``num_samples`` (more samples add rounds and keep the old ones) and
  the statistics file (metrics are recomputed from the stored features at every run).
  """
  ec, data = config.eval, config.data
  groups = {'common': {
      'seed': config.seed, 'round_size': round_images,
      'training.sde': config.training.sde, 'training.continuous': config.training.continuous,
      **{f'model.{k}': v for k, v in config.model.to_dict().items()},
      **{f'data.{k}': data.get(k) for k in ('dataset', 'category', 'image_size',
                                             'num_channels', 'centered')}}}
  if settings.enable_loss:
    groups['loss'] = {'training.reduce_mean': config.training.reduce_mean,
                      'training.likelihood_weighting': config.training.likelihood_weighting,
                      'data.uniform_dequantization': data.get('uniform_dequantization')}
  if settings.enable_bpd:
    groups['bpd'] = {'eval.bpd_dataset': settings.bpd_split,
                     'eval.bpd_num_repeats': settings.bpd_repeats,
                     'eval.bpd_solver': settings.bpd_solver, 'eval.bpd_rtol': settings.bpd_rtol,
                     'eval.bpd_atol': settings.bpd_atol}
  if settings.enable_sampling:
    weights = ec.get('inception_weights')
    groups['sampling'] = {
        **{f'sampling.{k}': v
           for k, v in sampling.config_fields(config, sde_lib.from_config(config)).items()},
        'eval.inception_width': settings.inception_width,
        'eval.inception_image_size': settings.inception_image_size,
        'eval.inception_weights': os.path.basename(weights) if weights else None}
  return json.loads(json.dumps(groups, default=str))


def check_fingerprint(eval_dir: str, current: dict[str, dict]) -> None:
  """Checks ``current`` against ``eval_dir/config.json`` and adds its new stages there.

  A stage's settings are recorded the first time it runs in the folder; later runs of that
  stage must have the same ones.

  Raises:
    ValueError: naming every field whose recorded value differs, so that finished rounds of
      other settings are never mixed with new ones.
  """
  path = os.path.join(eval_dir, 'config.json')
  stored = read_json(path)
  diff = []
  for group, values in current.items():
    old = stored.get(group, values)
    diff += [f'{k}: {old.get(k)!r} there, {values.get(k)!r} now'
             for k in sorted(set(old) | set(values)) if old.get(k) != values.get(k)]
  if diff:
    raise ValueError(
        f'{eval_dir} holds results of an evaluation with other settings ({"; ".join(diff)}). '
        'Its finished rounds would be mixed with new ones: evaluate into another folder '
        f'(--eval_folder NAME), or delete {eval_dir} to start over.')
  merged = {**stored, **current}
  if merged != stored and jax.process_index() == 0:
    os.makedirs(eval_dir, exist_ok=True)
    write_json(path, merged)


# --------------------------------------------------------------------------------------------
# Files: written whole or not at all.


def write_atomic(path: str, write: Callable[[Any], None]) -> None:
  """``write(file)`` into ``path + '.tmp'``, then renames it to ``path``."""
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def save_npz(path: str, **arrays) -> None:
  write_atomic(path, lambda f: np.savez_compressed(f, **arrays))


def write_json(path: str, value: Any) -> None:
  write_atomic(path, lambda f: f.write(json.dumps(value, indent=1, default=str).encode()))


def read_json(path: str) -> dict:
  """The JSON object in ``path``; {} if there is no such file."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def load_npz(path: str, *keys: str) -> dict[str, np.ndarray]:
  """The arrays of an ``.npz`` (only ``keys`` if given: the others are not decompressed)."""
  with np.load(path, allow_pickle=False) as data:
    return {k: data[k] for k in keys or data.files}


def agreed(flags: list[bool]) -> np.ndarray:
  """Process 0's view of which rounds are done, on every process (hosts need not share a
  file system, and all must run the same rounds)."""
  flags = np.asarray(flags, bool)
  if jax.process_count() == 1 or flags.size == 0:
    return flags
  return np.asarray(multihost_utils.broadcast_one_to_all(flags))


def remove_temporary(directory: str) -> None:
  """Deletes the temporary files that a killed job left in ``directory``."""
  if jax.process_index() == 0:
    for pattern in ('*.tmp', '*.tmp.png'):
      for path in glob.glob(os.path.join(directory, pattern)):
        os.remove(path)


# --------------------------------------------------------------------------------------------
# Checkpoints: the original's numbers.


_ORIGINAL_NAME = re.compile(r'checkpoint_(\d+)(\.pth)?$')


def checkpoint_number(step: int, meta: dict, snapshot_freq: int) -> int:
  """The original's number of the checkpoint stored as ``step``.

  An imported checkpoint whose source file is named ``checkpoint_N`` (score_sde) or
  ``checkpoint_N.pth`` (score_sde_pytorch) is number ``N``: the original saved checkpoint ``N``
  at step ``N * snapshot_freq`` but stored a step a little past it. Any other checkpoint is
  number ``step // snapshot_freq``.
  """
  source = str(meta.get('source', ''))
  match = _ORIGINAL_NAME.search(os.path.basename(source)) if os.path.isabs(source) else None
  return int(match.group(1)) if match else step // snapshot_freq


class CheckpointIndex:
  """Read-only view of ``workdir/checkpoints``: which stored step is checkpoint ``N``.

  The manager neither saves nor deletes anything (in particular it leaves the temporary
  directories of a training job's save in progress alone).
  """

  def __init__(self, workdir: str, snapshot_freq: int):
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.snapshot_freq = snapshot_freq
    self.manager = None
    self.meta: dict[int, dict] = {}

  def _manager(self):
    if self.manager is None and os.path.isdir(self.directory):
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      self.manager = ocp.CheckpointManager(
          self.directory, item_names=checkpoints.ITEMS,
          options=ocp.CheckpointManagerOptions(read_only=True, create=False,
                                               save_interval_steps=0))
    return self.manager

  def _meta(self, step: int) -> dict:
    if step not in self.meta:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      self.meta[step] = dict(restored['meta'])
    return self.meta[step]

  def numbers(self) -> dict[int, tuple[int, str]]:
    """``{N: (step, source)}`` of the finished checkpoints now on disk; the smallest step where
    several have one number (the snapshot, not a later preemption checkpoint)."""
    manager = self._manager()
    if manager is None:
      return {}
    manager.reload()
    out: dict[int, tuple[int, str]] = {}
    for step in sorted(manager.all_steps(), reverse=True):
      meta = self._meta(step)
      out[checkpoint_number(step, meta, self.snapshot_freq)] = (step, str(meta.get('source')))
    return out

  def wait_for(self, ckpt: int) -> tuple[int, str]:
    """``(step, source)`` of checkpoint ``ckpt``, waiting until it exists."""
    warned = False
    while True:
      found = self.numbers()
      if ckpt in found:
        return found[ckpt]
      if not warned and jax.process_index() == 0:
        logging.warning(
            'Waiting for checkpoint %d (a step in [%d, %d) of %s, or one imported from '
            'checkpoint_%d[.pth]); checkpoints there now: %s. Looking again every %d s.',
            ckpt, ckpt * self.snapshot_freq, (ckpt + 1) * self.snapshot_freq, self.directory,
            ckpt, {n: s for n, (s, _) in sorted(found.items())} or 'none', WAIT_SECONDS)
        warned = True
      time.sleep(WAIT_SECONDS)

  def restore_ema(self, step: int, target: Any) -> Any:
    """The EMA parameters of ``step``, into ``target``'s shapes and shardings."""
    return checkpoints.restore_items(self.manager, step, {'params_ema': target})['params_ema']

  def close(self) -> None:
    if self.manager is not None:
      self.manager.close()


# --------------------------------------------------------------------------------------------
# Data: a whole split, once, in order.


def split_batches(config, split: str, per_process: int,
                  dequantize: bool | None = False) -> tuple[int, Iterator[dict]]:
  """Every example of the ``'train'`` or ``'eval'`` split once, in order, as zero-padded
  host-local batches with ``'mask'`` (as ``data.get_dataset``'s eval split), and how many
  batches each process gets.

  The train split read this way (unshuffled, not repeated, nothing dropped) is what data-set
  statistics and bits/dim on the train split need; ``data.get_dataset`` only streams it for
  training. ``dequantize=None`` follows ``data.uniform_dequantization``.
  """
  # pylint: disable=protected-access
  spec = data_lib._spec(config, 'eval', per_process, config.seed, 0, None, None, dequantize)
  if spec.dataset in data_lib.TOY_DATASETS:
    raise ValueError(f'data.dataset={spec.dataset!r} is a 2-D toy set; evaluation jobs are for '
                     'image data sets (the toy sets have `sde-jax toy`).')
  if spec.dataset in data_lib.DIGITS_DATASETS:
    x_train, y_train, x_eval, y_eval = data_lib.digits_arrays(
        spec.example_shape[0], colored=spec.dataset == 'digits_rgb')
    x, y = (x_train, y_train) if split == 'train' else (x_eval, y_eval)
    largest = math.ceil(len(x) / spec.process_count)
    return math.ceil(largest / per_process), data_lib._array_eval(x, y, spec)
  source = data_lib._source(config.data, spec)
  if split == 'train':
    source = dataclasses.replace(source, eval_split=source.train_split)
  largest = source.sizes(source.eval_split)[1]
  return math.ceil(largest / per_process), data_lib._tf_eval(source, spec)


def global_mask(mask: np.ndarray) -> np.ndarray:
  """The ``'mask'`` of a batch over all processes, in the order of the global batch."""
  if jax.process_count() == 1:
    return np.asarray(mask, bool)
  return np.asarray(multihost_utils.process_allgather(np.asarray(mask)), bool).reshape(-1)


# --------------------------------------------------------------------------------------------
# The Inception network.


@dataclasses.dataclass(frozen=True)
class Inception:
  """The FID Inception network with its weights; ``features`` runs it on every device."""

  model: inception.InceptionV3
  params: Any
  apply_fn: Callable  # one object, so that extract_features compiles it once
  weights: str

  @property
  def pool_dim(self) -> int:
    return int(inception.param_shapes(self.model)[('fc', 'kernel')].shape[0])

  def features(self, local_images: np.ndarray, batch_size: int, mesh) -> dict[str, np.ndarray]:
    return fid.extract_features(self.apply_fn, self.params, local_images, batch_size, mesh)


def load_inception(settings: EvalSettings) -> Inception:
  """The network of ``eval.inception_width`` / ``inception_image_size`` with the weights at
  ``eval.inception_weights``.

  Raises:
    FileNotFoundError: if the weights are not set or not there (saying where to get them).
  """
  if not settings.inception_weights:
    raise FileNotFoundError(
        'config.eval.inception_weights is not set. sde-jax never downloads the Inception '
        f"weights: get pytorch-fid's FID Inception file from {inception.WEIGHTS_URL} and pass "
        '--config.eval.inception_weights=PATH (the .pth, or an .npz converted from it; see '
        'docs/evaluation.md).')
  model = inception.InceptionV3(width=settings.inception_width,
                                image_size=settings.inception_image_size)
  params = inception.load_params(settings.inception_weights, model)
  return Inception(model, params, lambda p, x: model.apply({'params': p}, x),
                   os.path.abspath(settings.inception_weights))


def load_data_pools(settings: EvalSettings, config, net: Inception) -> np.ndarray:
  """The data set's ``pool_3`` features from ``eval.stats_path``.

  Raises:
    FileNotFoundError: if the path is not set or the file is missing.
    ValueError: if the features are not the network's (another width).
  """
  if not settings.stats_path:
    name = fid.stats_filename(config.data.dataset, config.data.image_size,
                              config.data.get('category'))
    raise FileNotFoundError(
        'config.eval.stats_path is not set: FID and KID compare samples with the data set\'s '
        f'Inception features. Compute them once with `sde-jax fid-stats` (it writes {name}), '
        'or use the original score_sde file of that name, and pass '
        '--config.eval.stats_path=PATH.')
  pools = fid.load_stats(settings.stats_path)['pool_3']
  if pools.ndim != 2 or pools.shape[1] != net.pool_dim:
    raise ValueError(f'{settings.stats_path} holds pool_3 features of shape {pools.shape}; the '
                     f'Inception network of eval.inception_width={settings.inception_width} '
                     f'gives {net.pool_dim} per image.')
  return pools


# --------------------------------------------------------------------------------------------
# Data-set statistics (`sde-jax fid-stats`).


def stats_paths(config, workdir: str) -> tuple[str, str]:
  """Where ``fid-stats`` writes: ``eval.stats_path`` if set, else ``workdir/<the original's
  file name>``; and the mean/covariance file beside it (``..._mean_cov.npz``)."""
  path = config.eval.get('stats_path') or os.path.join(
      workdir, fid.stats_filename(config.data.dataset, config.data.image_size,
                                  config.data.get('category')))
  stem = path[:-4] if path.endswith('.npz') else path
  return path, stem + '_mean_cov.npz'


def dataset_stats(config, workdir: str) -> str:
  """Inception features of every image of the training split, as the original's stats files.

  The images are the training pipeline's (same resize and crop), as uint8 in [0, 255]: no
  flips, no dequantization, the last partial batch kept. Writes ``pool_3`` (n, d) in the
  original's format (:func:`sde_jax.metrics.fid.save_stats`) and ``mu`` (d,), ``sigma`` (d, d)
  (float64, unbiased covariance; the names pytorch-fid's statistics files use) beside it.

  Returns:
    The path of the ``pool_3`` file.

  Raises:
    FileExistsError: if either file exists (statistics are never overwritten).
  """
  settings = EvalSettings.from_config(config)
  path, mean_cov_path = stats_paths(config, workdir)
  for p in (path, mean_cov_path):
    if os.path.exists(p):
      raise FileExistsError(f'{p} exists; statistics are never overwritten (delete it, or set '
                            '--config.eval.stats_path to another file).')
  parallel.initialize()
  mesh = parallel.make_mesh(config.parallel.fsdp)
  net = load_inception(settings)
  batch = round_size(settings, mesh)
  n_batches, batches = split_batches(config, 'train', batch // jax.process_count())
  pools = []
  with tqdm(total=n_batches, unit='batch', desc='fid-stats',
            disable=jax.process_index() != 0) as bar:
    for local in batches:
      out = net.features(data_lib.to_uint8_data(local['image']), batch, mesh)
      pools.append(out['pool_3'][global_mask(local['mask'])])
      bar.update(1)
  pool_3 = np.concatenate(pools)
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    mu, sigma = fid.feature_statistics(pool_3)
    write_atomic(path, lambda f: fid.save_stats(f, pool_3))
    save_npz(mean_cov_path, mu=mu, sigma=sigma)
    logging.info('Wrote the Inception features of %d training images to %s and their mean and '
                 'covariance to %s', len(pool_3), path, mean_cov_path)
  return path


# --------------------------------------------------------------------------------------------
# The compiled programs of one job, built on first use and shared by every checkpoint.


class Programs:
  """Jitted loss, bits/dim and sampling programs; params are an argument, never a constant."""

  def __init__(self, config, job: train.Job, settings: EvalSettings, batch: int, mesh):
    self.config, self.job, self.settings, self.batch, self.mesh = (
        config, job, settings, batch, mesh)
    self.method = config.sampling.method.lower()
    self.sampler_name = sampling.describe_from_config(config)

  @functools.cached_property
  def loss(self):
    """``(params, key, images) -> per-example losses``, sharded like the batch."""
    loss_fn = self.job.loss_fn(self.config, train=False)
    return jax.jit(lambda params, key, images: loss_fn(params, key, images)[1]['per_example'],
                   out_shardings=parallel.batch_sharding(self.mesh))

  @functools.cached_property
  def dequantize(self):
    """``(key, images01, first_index) -> model-space data``, uniformly dequantized."""
    return jax.jit(lambda key, x, first: self.job.scaler(
        likelihood.uniform_dequantize(key, x, first)))

  @functools.cached_property
  def likelihood(self):
    s = self.settings
    return likelihood.get_likelihood_fn(self.job.sde, self.job.inverse_scaler, rtol=s.bpd_rtol,
                                        atol=s.bpd_atol, solver=s.bpd_solver)

  @functools.cached_property
  def draw(self):
    """``(key, params, first_index) -> (images in [0, 1], nfe)``: one round, split over devices,
    with the config's sampler; image i from ``fold_in(key, first_index + i)``
    (:func:`sde_jax.train.sharded_sampler`)."""
    return train.sharded_sampler(self.config, self.job, self.batch, self.mesh)


@dataclasses.dataclass
class Checkpoint:
  """One checkpoint under evaluation: its number, step, folder, and lazily restored params."""

  number: int
  step: int
  source: str
  directory: str
  restore: Callable[[], Any]

  @functools.cached_property
  def params(self):
    logging.info('Restoring checkpoint %d (step %d).', self.number, self.step)
    return self.restore()

  def path(self, name: str) -> str:
    return os.path.join(self.directory, name)


def check_same_checkpoint(ckpt: Checkpoint) -> None:
  """Records which stored step ``ckpt_<N>/`` is about (``checkpoint.json``), or checks it.

  Raises:
    ValueError: if the folder holds results of another step with the same number (e.g. after
      another file was imported as checkpoint N).
  """
  path = ckpt.path('checkpoint.json')
  recorded = read_json(path)
  if recorded and recorded['step'] != ckpt.step:
    raise ValueError(f'{ckpt.directory} holds results of step {recorded["step"]} '
                     f'({recorded["source"]}), but checkpoint {ckpt.number} is now step '
                     f'{ckpt.step} ({ckpt.source}); evaluate into another --eval_folder.')
  if not recorded and jax.process_index() == 0:
    os.makedirs(ckpt.directory, exist_ok=True)
    write_json(path, {'step': ckpt.step, 'source': ckpt.source})


def _bar(total: int, done: int, unit: str, desc: str, hide: bool = False) -> tqdm:
  """A progress bar with rate and ETA, on process 0, unless there is nothing left to do."""
  return tqdm(total=total, initial=done, unit=unit, desc=desc, smoothing=0.1,
              disable=hide or jax.process_index() != 0)


# --------------------------------------------------------------------------------------------
# Stages. Each skips what its files hold and returns its summary (on process 0; None elsewhere).


def eval_loss(ckpt: Checkpoint, programs: Programs, config, key: Array) -> dict | None:
  """The loss of the EMA weights on every example of the eval split (as the original: its
  dequantization if ``data.uniform_dequantization``); batch b draws from ``fold_in(key, b)``."""
  path = ckpt.path('loss.npz')
  if not agreed([os.path.exists(path)])[0]:
    n_batches, batches = split_batches(config, 'eval', programs.batch // jax.process_count(),
                                       dequantize=None)
    losses = []
    with _bar(n_batches, 0, 'batch', f'ckpt {ckpt.number} loss') as bar:
      for b, local in enumerate(batches):
        images = parallel.host_local_to_global(local['image'], programs.mesh)
        per_example = train.gather(programs.loss(ckpt.params, jax.random.fold_in(key, b),
                                                 images))
        losses.append(per_example[global_mask(local['mask'])])
        bar.update(1)
    if jax.process_index() == 0:
      all_losses = np.concatenate(losses)
      save_npz(path, all_losses=all_losses, mean_loss=all_losses.mean())
  if jax.process_index() != 0:
    return None
  all_losses = load_npz(path)['all_losses']
  return {'loss': float(np.mean(all_losses)), 'loss_examples': int(len(all_losses))}


def eval_bpd(ckpt: Checkpoint, programs: Programs, config, settings: EvalSettings,
             key: Array) -> dict | None:
  """Bits/dim of uniformly dequantized data under the probability-flow ODE, over
  ``bpd_repeats`` passes of the split; one file per batch and pass.

  In pass p, example i of the split is dequantized with ``fold_in(fold_in(key, p), 0)`` and
  probed with ``fold_in(fold_in(key, p), 1)``, each folded with ``i``.
  """
  split = 'eval' if settings.bpd_split == 'test' else 'train'
  per_process = programs.batch // jax.process_count()
  n_batches, _ = split_batches(config, split, per_process)
  total = n_batches * settings.bpd_repeats
  paths = [ckpt.path(f'bpd_{r}.npz') for r in range(total)]
  done = agreed([os.path.exists(p) for p in paths])
  with _bar(total, int(done.sum()), 'batch', f'ckpt {ckpt.number} bits/dim',
            done.all()) as bar:
    for repeat in range(settings.bpd_repeats):
      rounds = range(repeat * n_batches, (repeat + 1) * n_batches)
      if all(done[r] for r in rounds):
        continue
      k_dequantize, k_probe = jax.random.split(jax.random.fold_in(key, repeat))
      # zip: the batches whose rounds are counted above, should a pipeline yield more.
      for b, local in zip(range(n_batches), split_batches(config, split, per_process)[1]):
        if done[rounds[b]]:
          continue
        first = b * programs.batch
        images = parallel.host_local_to_global(local['image'], programs.mesh)
        data = programs.dequantize(k_dequantize, images, first)
        bpd, _, nfe = programs.likelihood(k_probe, programs.job.score_fn, ckpt.params, data,
                                          first_index=first)
        bpd = train.gather(bpd)[global_mask(local['mask'])]
        if jax.process_index() == 0:
          save_npz(paths[rounds[b]], bpd=bpd, nfe=np.asarray(nfe))
        bar.update(1)
  if jax.process_index() != 0:
    return None
  files = [load_npz(p) for p in paths]
  bpd = np.concatenate([f['bpd'] for f in files])
  return {'bpd': float(bpd.mean()), 'bpd_sem': float(bpd.std(ddof=1) / math.sqrt(len(bpd)))
          if len(bpd) > 1 else None, 'bpd_split': settings.bpd_split,
          'bpd_repeats': settings.bpd_repeats, 'bpd_values': int(len(bpd)),
          'bpd_nfe': float(np.mean([f['nfe'] for f in files]))}


def eval_samples(ckpt: Checkpoint, programs: Programs, settings: EvalSettings, net: Inception,
                 data_pools: np.ndarray | None, key: Array) -> dict | None:
  """``num_samples`` samples in rounds of ``programs.batch``, their Inception features, and
  FID / IS / KID of the first ``num_samples`` against ``data_pools``."""
  batch, mesh = programs.batch, programs.mesh
  rounds = math.ceil(settings.num_samples / batch)
  stats = [ckpt.path(f'statistics_{r}.npz') for r in range(rounds)]
  done = agreed([os.path.exists(p) for p in stats])
  per_process = batch // jax.process_count()
  mine = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
  with _bar(rounds * batch, int(done.sum()) * batch, 'img', f'ckpt {ckpt.number} samples',
            done.all()) as bar:
    for r in np.flatnonzero(~done):
      images, nfe = programs.draw(key, ckpt.params, int(r) * batch)
      # uint8 as the original: clip(x * 255).astype(uint8), truncating.
      images = train.to_uint8(train.gather(images))
      if jax.process_index() == 0:
        save_npz(ckpt.path(f'samples_{r}.npz'), samples=images, nfe=np.asarray(nfe))
      out = net.features(images[mine], batch, mesh)
      if jax.process_index() == 0:
        save_npz(stats[r], pool_3=out['pool_3'], logits=out['logits'])
      bar.update(batch)
  if jax.process_index() != 0:
    return None
  return {'sampler': programs.sampler_name, 'sampling_method': programs.method,
          **sample_metrics(ckpt, rounds, settings.num_samples, data_pools)}


def sample_metrics(ckpt: Checkpoint, rounds: int, num_samples: int,
                   data_pools: np.ndarray) -> dict:
  """FID, IS and KID of the first ``num_samples`` samples, as the original computes them (all
  samples at once; KID and FID with the data set first); writes ``grid.png``."""
  files = [load_npz(ckpt.path(f'statistics_{r}.npz')) for r in range(rounds)]
  pools = np.concatenate([f['pool_3'] for f in files])[:num_samples]
  logits = np.concatenate([f['logits'] for f in files])[:num_samples]
  kid, kid_sem = fid.kernel_inception_distance_and_std(data_pools, pools)
  nfe = [float(np.mean(load_npz(ckpt.path(f'samples_{r}.npz'), 'nfe')['nfe']))
         for r in range(rounds)]
  write_grid(ckpt, rounds, min(num_samples, GRID_SIZE))
  return {'num_samples': num_samples, 'fid': fid.fid_from_features(data_pools, pools),
          'inception_score': fid.inception_score(logits), 'kid': kid,
          'kid_sem': kid_sem if math.isfinite(kid_sem) else None,  # one block: no estimate
          'nfe': float(np.mean(nfe)), 'grid': os.path.join(os.path.basename(ckpt.directory),
                                                           'grid.png')}


def write_grid(ckpt: Checkpoint, rounds: int, count: int) -> None:
  """``grid.png``: the first ``count`` samples."""
  images = []
  for r in range(rounds):
    images.append(load_npz(ckpt.path(f'samples_{r}.npz'))['samples'])
    if sum(len(x) for x in images) >= count:
      break
  tmp = ckpt.path('grid.tmp.png')  # PIL picks the format from the name's extension
  viz.image_grid_png(tmp, np.concatenate(images)[:count])
  os.replace(tmp, ckpt.path('grid.png'))


# --------------------------------------------------------------------------------------------
# Reports.


def _fmt(value, spec: str = '.4g') -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return format(value, spec)


def report_markdown(report: dict) -> str:
  """``report.md``: the settings, one table row per checkpoint, the sample grids."""
  lines = [f'# Evaluation of {report["workdir"]}', '', f'- config: `{report["config_name"]}`']
  if report.get('sampler'):
    lines += [f'- sampler: {report["sampler"]}; sample i from fold_in(key(seed), i), seed '
              f'{report["seed"]}',
              f'- Inception: `{report["inception_weights"]}`; data statistics: '
              f'`{report["stats_path"]}`']
  if report.get('bpd'):
    lines.append(f'- bits/dim: {report["bpd"]}')
  lines += ['', '| ckpt | step | eval loss | bits/dim | FID | IS | KID | samples | NFE |',
            '|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
  for row in report['checkpoints']:
    bpd = (f'{row["bpd"]:.4f} ± {_fmt(row.get("bpd_sem"), ".4f")}' if 'bpd' in row else '-')
    kid = (f'{row["kid"]:.3e}' if 'kid' in row else '-')
    lines.append(f'| {row["ckpt"]} | {row["step"]} | {_fmt(row.get("loss"))} | {bpd} | '
                 f'{_fmt(row.get("fid"), ".3f")} | {_fmt(row.get("inception_score"), ".3f")} | '
                 f'{kid} | {row.get("num_samples", "-")} | {_fmt(row.get("nfe"), ".1f")} |')
  lines.append('')
  for row in report['checkpoints']:
    if 'grid' in row:
      lines += [f'Checkpoint {row["ckpt"]} (step {row["step"]}, {row["source"]}):', '',
                f'![samples of checkpoint {row["ckpt"]}]({row["grid"]})', '']
  return '\n'.join(lines)


def write_reports(eval_dir: str, header: dict) -> dict:
  """``report.json`` and ``report.md`` from every ``ckpt_*/report.json`` in ``eval_dir``."""
  rows = [read_json(path) for path in glob.glob(os.path.join(eval_dir, 'ckpt_*', 'report.json'))]
  report = {**header, 'checkpoints': sorted(rows, key=lambda row: row['ckpt'])}
  write_json(os.path.join(eval_dir, 'report.json'), report)
  write_atomic(os.path.join(eval_dir, 'report.md'), lambda f: f.write(
      report_markdown(report).encode()))
  return report


def report_header(config, settings: EvalSettings, eval_dir: str, config_name: str | None,
                  net: Inception | None) -> dict:
  """The report's settings. Those of a stage that is off now stay as an earlier run recorded
  them (its rows are that run's)."""
  header = {'sampler': None, 'inception_weights': None, 'stats_path': None, 'bpd': None,
            **{k: v for k, v in read_json(os.path.join(eval_dir, 'report.json')).items()
               if k != 'checkpoints'}}
  header.update({'kind': 'sde-jax eval report',
                 'workdir': os.path.abspath(os.path.dirname(os.path.abspath(eval_dir))),
                 'config_name': config_name or header.get('config_name'), 'seed': config.seed,
                 'config': json.loads(config.to_json_best_effort())})
  if settings.enable_sampling:
    header.update(sampler=sampling.describe_from_config(config), inception_weights=net.weights,
                  stats_path=os.path.abspath(settings.stats_path))
  if settings.enable_bpd:
    header['bpd'] = (f'{settings.bpd_split} split, {settings.bpd_repeats} pass(es), uniform '
                     f'dequantization, {settings.bpd_solver} rtol {settings.bpd_rtol} atol '
                     f'{settings.bpd_atol}')
  return header


# --------------------------------------------------------------------------------------------
# The job.


def evaluate(config, workdir: str, eval_folder: str = 'eval',
             config_name: str | None = None) -> dict:
  """Evaluates checkpoints ``eval.begin_ckpt .. eval.end_ckpt`` of ``workdir`` (EMA weights).

  Per checkpoint, as enabled: the eval loss, bits/dim, and samples with FID / IS / KID; each
  in rounds whose results are files, so that a killed job resumes at the first unfinished
  round. Waits for checkpoints that do not exist yet. See the module docstring for the files.

  Args:
    config: the model's config with the ``eval`` fields.
    workdir: holds ``checkpoints/`` (trained or imported).
    eval_folder: the sub-folder of ``workdir`` for results.
    config_name: the config file, recorded in the report (``sde-jax compare`` reads it).

  Returns:
    The report: settings and one row per checkpoint evaluated in this folder so far (the rows
    only on process 0).

  Raises:
    FileNotFoundError: for missing Inception weights or data statistics, at start-up.
    ValueError: for bad settings, or an eval folder written with other settings.
  """
  settings = EvalSettings.from_config(config)
  parallel.initialize()
  mesh = parallel.make_mesh(config.parallel.fsdp)
  batch = round_size(settings, mesh)
  eval_dir = os.path.join(workdir, eval_folder)
  net = load_inception(settings) if settings.enable_sampling else None
  data_pools = None
  if net is not None:
    data_pools = load_data_pools(settings, config, net)  # checked on every process, kept on 0
    data_pools = data_pools if jax.process_index() == 0 else None
  check_fingerprint(eval_dir, fingerprint(config, settings, batch))
  header = report_header(config, settings, eval_dir, config_name, net)
  job = train.Job.from_config(config)
  abstract = job.abstract_params()
  target = train.with_shardings(abstract, parallel.param_shardings(mesh, abstract))
  programs = Programs(config, job, settings, batch, mesh)
  index = CheckpointIndex(workdir, settings.snapshot_freq)
  sample_key, eval_key = jax.random.key(config.seed), jax.random.key(config.seed + 1)
  logging.info('Evaluating checkpoints %d to %d of %s into %s: loss %s, bits/dim %s, %s.',
               settings.begin_ckpt, settings.end_ckpt, workdir, eval_dir, settings.enable_loss,
               settings.enable_bpd, f'{settings.num_samples} samples in rounds of {batch} with '
               f'{header["sampler"]}' if settings.enable_sampling else 'no sampling')
  report = {**header, 'checkpoints': []}
  try:
    for number in range(settings.begin_ckpt, settings.end_ckpt + 1):
      step, source = index.wait_for(number)
      ckpt = Checkpoint(number, step, source, os.path.join(eval_dir, f'ckpt_{number}'),
                        functools.partial(index.restore_ema, step, target))
      check_same_checkpoint(ckpt)
      remove_temporary(ckpt.directory)
      row = {'ckpt': number, 'step': step, 'source': source}
      if settings.enable_loss:
        row.update(eval_loss(ckpt, programs, config, jax.random.fold_in(eval_key, rng.EVAL_LOSS))
                   or {})
      if settings.enable_bpd:
        row.update(eval_bpd(ckpt, programs, config, settings,
                            jax.random.fold_in(eval_key, rng.EVAL_BPD)) or {})
      if settings.enable_sampling:
        row.update(eval_samples(ckpt, programs, settings, net, data_pools, sample_key) or {})
      if jax.process_index() == 0:
        # Stages off in this run keep the numbers of an earlier run (same recorded settings).
        row = {**read_json(ckpt.path('report.json')), **row}
        write_json(ckpt.path('report.json'), row)
        report = write_reports(eval_dir, header)
        logging.info('Checkpoint %d: %s', number, {k: v for k, v in row.items()
                                                   if isinstance(v, (int, float))})
  finally:
    index.close()
  return report
