"""NCSNv2 configs: annealed Langevin dynamics with the NCSNv2 RefineNet."""
