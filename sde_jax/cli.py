"""The ``sde-jax`` command: ``sde-jax COMMAND --config CONFIG --workdir DIR [--config.a.b=v]``
(``sde-jax compare --workdir DIR`` takes no config, ``sde-jax plan --config CONFIG --topology
NAME`` no workdir, ``sde-jax convert-arrayrecord --records=GLOB --out=DIR`` neither).

Flags only; each command calls one function.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from sde_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to an ml_collections config file.',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples and reports.')
flags.DEFINE_string('checkpoint', None, 'import: an original checkpoint (score_sde checkpoint_N '
                    'or score_sde_pytorch .pth).')
flags.DEFINE_integer('max_pth_bytes', None, 'import: the most bytes the arrays of a .pth may '
                     'take (default: 4 times its size plus 16 MiB); raise it only for a file '
                     'you trust.')
flags.DEFINE_integer('num_samples', None, 'sample: how many images to draw.')
flags.DEFINE_string('eval_folder', 'eval', 'eval: the sub-folder of --workdir for its results.')
flags.DEFINE_integer('class', None, 'sample: draw samples of this class with the classifier of '
                     'sde-jax train-classifier (guidance: --config.controllable.guidance_scale).')
flags.DEFINE_integer('num_images', 8, 'inpaint, colorize: how many images to condition on.')
flags.DEFINE_list('allow_config_change', [], 'train, train-classifier, train-projection: '
                  'config fields (or sections, or "all") that may differ from those the '
                  'workdir\'s checkpoint was '
                  'trained with; others than the schedule are refused (docs/training.md).')
flags.DEFINE_bool('allow_projection_mismatch', False, 'sample, eval with '
                  'sampling.method=predict_project: use a projection network trained against '
                  'another score checkpoint than the one sampled (docs/predict_project.md).')
flags.DEFINE_string('topology', None, 'plan: the TPU topology to compile for (v5e:4x4, '
                    'v5p:2x2x2, v5litepod-16, ...; docs/launch.md).')
flags.DEFINE_bool('json', False, 'plan: print one JSON object per program.')
flags.DEFINE_bool('max_batch', False, 'plan: search the largest global batch of each program '
                  'that fits (one compile per candidate).')
flags.DEFINE_list('programs', ['train', 'eval_loss', 'sample'], 'plan: the programs to compile '
                  '(train, eval_loss, sample, bpd, fid_features).')
flags.DEFINE_string('records', None, 'convert-arrayrecord: TFRecord files (a path or glob) to '
                    'write as ArrayRecord files under --out.')
flags.DEFINE_string('tfds_dir', None, 'convert-arrayrecord: a TFDS set prepared as TFRecord (its '
                    'version folder) to convert to ArrayRecord (in place, or under --out).')
flags.DEFINE_string('out', None, 'convert-arrayrecord: the output folder.')
flags.DEFINE_string('folder', None, 'inpaint, colorize: a folder of PNG / JPEG images to use '
                    'instead of the config\'s eval split.')


# Each command imports its own job when it runs (deferred: a job brings TensorFlow, orbax or
# scikit-learn, which the other commands, and --help, need not load).


def _toy(config, workdir):
  from sde_jax.jobs import toy
  toy.run_toy(config, workdir)
  print((workdir_lib.path(workdir) / 'report.md').read_text())


def _import(config, workdir):
  if FLAGS.checkpoint is None:
    raise app.UsageError('sde-jax import needs --checkpoint PATH.')
  from sde_jax.jobs import import_checkpoint
  import_checkpoint.import_to_workdir(config, FLAGS.checkpoint, workdir,
                                      max_pth_bytes=FLAGS.max_pth_bytes)


def _train(config, workdir):
  from sde_jax.jobs import train
  train.train_and_evaluate(config, workdir,
                           allow_config_change=tuple(FLAGS.allow_config_change))


def _sample(config, workdir):
  label = FLAGS['class'].value
  if label is not None:
    from sde_jax.jobs import controllable
    count = 16 if FLAGS.num_samples is None else FLAGS.num_samples
    path = controllable.class_job(config, workdir, label, num_samples=count)
    print(f'Wrote {count} samples of class {label} to {path}')
    return
  if FLAGS.num_samples is None:
    raise app.UsageError('sde-jax sample needs --num_samples N (or --class K).')
  from sde_jax.jobs import sample
  path = sample.sample(config, workdir, FLAGS.num_samples,
                       allow_projection_mismatch=FLAGS.allow_projection_mismatch)
  print(f'Wrote {FLAGS.num_samples} samples to {path}')


def _inpaint(config, workdir):
  from sde_jax.jobs import controllable
  path = controllable.inpaint_job(config, workdir, num_images=FLAGS.num_images,
                                  folder=FLAGS.folder)
  print(f'Wrote inputs, masks and inpainted images to {path}')


def _colorize(config, workdir):
  from sde_jax.jobs import controllable
  path = controllable.colorize_job(config, workdir, num_images=FLAGS.num_images,
                                   folder=FLAGS.folder)
  print(f'Wrote inputs, gray images and colorized images to {path}')


def _train_classifier(config, workdir):
  from sde_jax.jobs import train_classifier
  train_classifier.train_classifier(config, workdir,
                                    allow_config_change=tuple(FLAGS.allow_config_change))


def _train_projection(config, workdir):
  from sde_jax.jobs import train_projection
  train_projection.train_projection(config, workdir, allow_config_change=tuple(FLAGS.allow_config_change))


def _eval(config, workdir):
  from sde_jax.jobs import evaluate
  evaluate.evaluate(config, workdir, eval_folder=FLAGS.eval_folder,
                    config_name=config_flags.get_config_filename(FLAGS['config']),
                    allow_projection_mismatch=FLAGS.allow_projection_mismatch)
  path = workdir_lib.path(workdir) / FLAGS.eval_folder / 'report.md'
  if path.exists():
    print(path.read_text())


def _fid_stats(config, workdir):
  from sde_jax.jobs import fid_stats
  path = fid_stats.dataset_stats(config, workdir)
  print(f'Wrote the data set statistics to {path}')


def _plan(config, workdir):
  del workdir  # compiles only; writes nothing
  if FLAGS.topology is None:
    raise app.UsageError('sde-jax plan needs --topology (v5e:4x4, v5p:2x2x2, v5litepod-16, ...).')
  from sde_jax.jobs import plan
  print(plan.plan_text(config, FLAGS.topology, tuple(FLAGS.programs), as_json=FLAGS.json,
                       search=FLAGS.max_batch))


def _compare(config, workdir):
  del config  # reads the eval reports under --workdir only
  from sde_jax.jobs import compare
  print(compare.write_comparison(workdir))


def _convert_arrayrecord(config, workdir):
  del config, workdir  # converts files only
  if (FLAGS.records is None) == (FLAGS.tfds_dir is None) or (FLAGS.records and not FLAGS.out):
    raise app.UsageError('sde-jax convert-arrayrecord needs --records=GLOB --out=DIR, or '
                         '--tfds_dir=DIR [--out=DIR].')
  from sde_jax.jobs import convert_arrayrecord
  if FLAGS.records:
    for path in convert_arrayrecord.convert_records(FLAGS.records, FLAGS.out):
      print(f'Wrote {path}')
  else:
    convert_arrayrecord.convert_tfds(FLAGS.tfds_dir, FLAGS.out)
    print(f'Converted {FLAGS.tfds_dir} to ArrayRecord')


COMMANDS = {'toy': _toy, 'import': _import, 'train': _train, 'sample': _sample, 'eval': _eval,
            'fid-stats': _fid_stats, 'compare': _compare, 'inpaint': _inpaint,
            'colorize': _colorize, 'train-classifier': _train_classifier,
            'train-projection': _train_projection, 'plan': _plan,
            'convert-arrayrecord': _convert_arrayrecord}
NO_CONFIG = ('compare',)  # commands that need --workdir only
NO_CONFIG_NOR_WORKDIR = ('convert-arrayrecord',)
NO_WORKDIR = ('plan',)  # commands that need --config only


def _main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f'Usage: sde-jax COMMAND --config CONFIG --workdir DIR; got '
                         f'{argv[1:]!r}; COMMAND is one of {sorted(COMMANDS)}.')
  if argv[1] in NO_CONFIG_NOR_WORKDIR:
    pass
  elif argv[1] in NO_CONFIG:
    if FLAGS.workdir is None:
      raise app.UsageError(f'sde-jax {argv[1]} needs --workdir.')
  elif argv[1] in NO_WORKDIR:
    if FLAGS.config is None:
      raise app.UsageError(f'sde-jax {argv[1]} needs --config.')
  elif FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError('--config and --workdir are required.')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  COMMANDS[argv[1]](FLAGS.config, FLAGS.workdir)


def _quiet_orbax(record) -> bool:
  """orbax reports each save and restore in dozens of INFO lines; keep its warnings only."""
  return record.levelno >= std_logging.WARNING or f'{os.sep}orbax{os.sep}' not in record.pathname


def main():
  app.run(_main, argv=sys.argv)


if __name__ == '__main__':
  main()
