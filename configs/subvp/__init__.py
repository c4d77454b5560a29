"""Configs trained with the sub-VP SDE, at the original repository's paths."""
