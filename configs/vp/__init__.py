"""Configs trained with the VP SDE (DDPM noise scales), at the original repository's paths."""
