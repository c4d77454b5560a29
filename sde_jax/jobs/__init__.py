"""The jobs: what each ``sde-jax`` command runs, one module per command, and the config checks
(:mod:`.config_check`) every job runs before it creates or compiles anything.

This is the layer above the library and the only one that reads a whole ConfigDict: ``cli`` ->
``jobs`` -> the library (``sde``, ``losses``, ``models``, ``sampling``, ``train``, ``evaluate``,
...), never back (tests/test_import_graph.py). Nothing is imported here, so a command imports
only its own job's dependencies.

=====================  ==========================================================================
module                 command
=====================  ==========================================================================
``train``              ``sde-jax train`` (:func:`~sde_jax.jobs.train.train_and_evaluate`)
``sample``             ``sde-jax sample`` (:func:`~sde_jax.jobs.sample.sample`)
``evaluate``           ``sde-jax eval`` (:func:`~sde_jax.jobs.evaluate.evaluate`)
``fid_stats``          ``sde-jax fid-stats`` (:func:`~sde_jax.jobs.fid_stats.dataset_stats`)
``import_checkpoint``  ``sde-jax import`` (:func:`~sde_jax.jobs.import_checkpoint.import_to_workdir`)
``controllable``       ``sde-jax inpaint | colorize | sample --class``
``train_classifier``   ``sde-jax train-classifier``
``train_projection``   ``sde-jax train-projection``
``toy``                ``sde-jax toy`` (:func:`~sde_jax.jobs.toy.run_toy`)
``compare``            ``sde-jax compare`` (:func:`~sde_jax.jobs.compare.write_comparison`)
=====================  ==========================================================================
"""
