"""``runlocal``: any config of configs/ shrunk to compile and run in seconds on one CPU.

In the style of big_vision's ``:runlocal`` variants: the job keeps its code paths (network
family, SDE, sampler, data set, every section's options) and only its sizes shrink, so that a
test, or a first try on a laptop, runs the real thing quickly. The tests build their configs with
``tests.helpers.tiny_config`` (this recipe plus the test's own overrides) and their command
lines with ``tests.helpers.tiny_flags``.

Only fields the config has are changed (the toy config has no images, only a few configs have a
``classifier`` section).
"""

# Shrunk sizes, section by section; ``None`` entries are set by the network family below.
NETWORK = {
    # U-Nets (NCSN++, DDPM++ at any resolution): one resolution of 8 channels, one residual
    # block, no attention below the middle block.
    'unet': dict(nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=()),
    # DDPM's U-Net the same, with 32 channels: its GroupNorm has 32 groups.
    'ddpm': dict(nf=32, ch_mult=(1,), num_res_blocks=1, attn_resolutions=()),
    # RefineNets (NCSN, NCSNv2): 8 channels.
    'refinenet': dict(nf=8),
    # The toy MLP.
    'mlp': dict(features=(16, 16), embedding_dim=8),
}
FAMILIES = {'ddpm': 'ddpm', 'ncsnpp': 'unet', 'ncsn': 'refinenet', 'ncsnv2_64': 'refinenet',
            'ncsnv2_128': 'refinenet', 'ncsnv2_256': 'refinenet', 'mlp': 'mlp'}
# 25 steps: the fewest for which DDPM's discrete chain (beta_max / N < 1, at beta_max = 20) is
# a chain, so that every predictor runs.
NUM_SCALES = 25
IMAGE_SIZE = 8
# 12 steps of 8 examples, one per compiled call (XLA:CPU unrolls a call's steps, so each one
# more costs compile time in every test that trains; tests/test_multihost.py and
# tests/test_plan.py run several per call); a checkpoint every 2 steps (the last one kept) and
# every 8th kept for good; logs every 2 steps, evaluation every 4.
TRAINING = dict(batch_size=8, n_iters=12, n_jitted_steps=1, log_freq=2, eval_freq=4,
                snapshot_freq=8, snapshot_freq_for_preemption=2, keep_last=1,
                snapshot_sampling=False, snapshot_num_samples=8)
# Evaluation on 8 examples, the FID Inception at 1/16 of its width on 75 px inputs (its
# smallest input size), one pass for bits/dim.
EVAL = dict(batch_size=8, num_samples=8, num_likelihood=8, inception_width=1 / 16,
            inception_image_size=75, bpd_num_repeats=1)
OPTIM = dict(warmup=0)  # the parameters move from the first step
CONTROLLABLE = dict(solver_iters=1)
# With parallel.fsdp > 1, the shrunk network's kernels are sharded as a full-size network's are
# (its leaves are all far below the full-size threshold); biases and norms stay whole.
PARALLEL = dict(fsdp_min_size=2 ** 8)
# WRN-10-1 with an 8-wide embedding; 3 steps of 8 examples, one per call, saved at the end.
CLASSIFIER = dict(blocks_per_group=1, channel_multiplier=1, embedding_size=8)
CLASSIFIER_TRAINING = dict(batch_size=8, n_iters=3, n_jitted_steps=1, log_freq=1, eval_freq=3,
                           snapshot_freq=3, snapshot_freq_for_preemption=3, keep_last=1)
# The projection network: the classifier's schedule (its width follows the shrunk network).
PROJECTION_TRAINING = CLASSIFIER_TRAINING


def _set(section, fields):
  """Sets the fields of ``fields`` that ``section`` has."""
  section.update({k: v for k, v in fields.items() if k in section})


def runlocal(config):
  """Shrinks ``config`` in place (and returns it): the network, image size, number of noise
  scales, training schedule, evaluation sizes, warm-up, the FSDP size threshold, GMRES steps, and
  the classifier and projection sections.

  Raises:
    ValueError: for a network family the recipe does not know, so that a new one gets a size.
  """
  model = config.model
  if model.name not in FAMILIES:
    raise ValueError(f'runlocal: no shrunk size for model.name={model.name!r}; add it to '
                     f'configs/_runlocal.py FAMILIES (known: {sorted(FAMILIES)}).')
  _set(model, NETWORK[FAMILIES[model.name]])
  model.num_scales = NUM_SCALES
  _set(config.data, dict(image_size=IMAGE_SIZE))
  _set(config.training, TRAINING)
  _set(config.eval, EVAL)
  _set(config.optim, OPTIM)
  if 'parallel' in config:
    _set(config.parallel, PARALLEL)
  if 'controllable' in config:
    _set(config.controllable, CONTROLLABLE)
  if 'classifier' in config:
    _set(config.classifier, CLASSIFIER)
    _set(config.classifier.training, CLASSIFIER_TRAINING)
    _set(config.classifier.optim, OPTIM)
  if 'projection' in config:
    _set(config.projection.training, PROJECTION_TRAINING)
    _set(config.projection.optim, OPTIM)
  return config
