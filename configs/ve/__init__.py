"""Configs trained with the VE SDE (SMLD noise scales), at the original repository's paths."""
