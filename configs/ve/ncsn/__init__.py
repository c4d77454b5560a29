"""NCSN (NCSNv1) configs and their NCSNv2-technique ablations: annealed Langevin dynamics."""
