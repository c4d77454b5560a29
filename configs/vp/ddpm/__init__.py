"""The DDPM model of Ho et al. trained with the VP SDE or its discrete chain."""
