"""The NCSN++ (VE, continuous) of cifar10_ncsnpp_continuous.py plus the noise-conditional
WRN-28-10 classifier of the original's class-conditional CIFAR-10 samples.

One workdir holds both: ``sde-jax train`` (or ``sde-jax import`` of the released checkpoint)
for the score model, ``sde-jax train-classifier`` for the classifier under ``WORKDIR/classifier``,
then ``sde-jax sample --class K``. The classifier's schedule is ours (the original released the
classifier, not its training run): Adam at 2e-4, batch 128, 200k steps, EMA 0.999.
"""

from configs import _recipes
from configs.ve import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.classifier = _recipes.classifier()
  return config
