"""The journal's SQL migrations, shipped as the `tr_vault.migrations` package.

This file makes the directory a regular package: setuptools' editable finder cannot import a
namespace package nested under `tr_vault`, and `importlib.resources` needs it importable.
"""
