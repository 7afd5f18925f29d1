"""Sphinx configuration: API reference from the numpydoc docstrings (built with -W)."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

from nmfre import __version__  # noqa: E402

project = "nmfre"
author = "nmfre developers"
copyright = "2026, nmfre developers"  # noqa: A001
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "_templates"]
templates_path = ["_templates"]
autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# a public object without a docstring fails the build (warnings are errors)
numpydoc_validation_checks = {"GL08"}
numpydoc_validation_exclude = {r"\.__init__$", r"\._repr_html_$", r"\.__repr__$", r"\.__str__$"}
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]

html_theme = "pydata_sphinx_theme"
html_title = f"nmfre {version}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
