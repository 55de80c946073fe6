"""Tests of kardia_jax.data (a package so module names cannot clash with other test folders)."""
