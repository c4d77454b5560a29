"""ml_collections configs: one base per data set plus thin override files.

The override files sit at the paths of the original repository (``ve/cifar10_ncsnpp_continuous.py``,
``vp/ddpm/cifar10.py``, ...) and produce the same field names and values, so a command line such
as ``--config configs/ve/cifar10_ncsnpp_continuous.py --config.model.nf=64`` means what it meant
there. Each override file starts from a ``default_*_configs`` base and applies a training recipe
from ``_recipes`` and a model block from ``_models``; it states only what is particular to it.
"""
