"""NCSN++ with the continuous VE SDE on a folder of your own images (docs/data.md).

The recipe of the paper's 256 px runs (CelebA-HQ, FFHQ, LSUN): the LSUN base's schedule, noise
scales and sampler, NCSN++ with seven resolutions. Point ``--config.data.path`` at a folder (local
or ``gs://``) of PNG, JPEG or WebP images, nested folders allowed; each image is centre-cropped to a
square and resized to ``data.image_size``.

Set ``model.sigma_max`` to about the largest distance between two training images (in [0, 1]
pixel units; Song & Ermon 2020, technique 1): 348 is FFHQ's and CelebA-HQ's at 256 px. At another
size, give the network one resolution per halving down to 4 px (``model.ch_mult``, e.g. eight
entries at 512 px) and ``model.attn_resolutions`` one of them; docs/data.md has a worked example.
"""

from configs import _models, _recipes, default_lsun_configs


def get_config():
  config = default_lsun_configs.get_default_configs()
  config.data.update(
      dataset='folder',
      path='',  # required: the folder of images (local, or gs://bucket/...)
      image_size=256,
      num_channels=3,  # the images' own count (1 for grayscale), checked when they are read
      labels_from_folders=False,  # first-level folder names as classes (the classifier's labels)
      eval_path='',  # a second folder for eval (loss, bits/dim), or ...
      eval_fraction=0.0,  # ... a held-out fraction of data.path; neither: eval reads data.path
      skip_bad_files=False,  # leave out (and count) files that are not images, instead of failing
      upsample_small=False,  # upsample images smaller than image_size, instead of failing
  )
  config.model.sigma_max = 348
  _recipes.ve(config)
  _models.ncsnpp_256(config.model)
  return config
