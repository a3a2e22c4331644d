"""Sphinx configuration for the API reference built from the package's (Google-style) docstrings.

Build it with warnings as errors, from the repository root::

    python -m sphinx -W --keep-going -b html docs/api /tmp/api-html

``tests/test_docs.py`` runs the same build (marked ``slow``).
"""

from __future__ import annotations

import os
import sys

# Document the checkout this file lives in, not whatever copy of the package is installed in the environment.
sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

import lightning_sensitivity  # noqa: E402

project = "lightning-sensitivity"
author = "lightning-sensitivity developers"
copyright = "lightning-sensitivity developers"
release = lightning_sensitivity.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Google-style docstrings only (the package convention); NumPy-style sections would be misread.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
# "Attributes:" sections become :ivar: fields; as attribute directives they would clash with the dataclass fields
# autodoc documents itself (duplicate object descriptions).
napoleon_use_ivar = True

autodoc_default_options = {
    "members": True,
    "undoc-members": False,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
# Overrides of Lightning hooks (configure_optimizers, train_dataloader, ...) would otherwise inherit Lightning's own
# docstrings, which use Lightning's Sphinx roles and labels and say nothing about this package.
autodoc_inherit_docstrings = False
# Signatures stay readable; the types are listed with the parameters instead.
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# Not nitpicky: type hints name torch / Lightning classes, and without intersphinx (no network in the build) every
# one of them would be an unresolved reference. Broken RST, bad sections and unknown roles still fail under -W.
nitpicky = False

templates_path: list[str] = []
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
