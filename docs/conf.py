"""
Sphinx configuration for the smtpsvc documentation.
"""

import sys
from pathlib import Path

# The local extensions live next to this file, in _ext/.
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

project = "smtpsvc"
author = "The smtpsvc authors"
copyright = "the smtpsvc authors"

extensions = [
    "sphinx.ext.autodoc",
    "smtpsvc_options",
]

# No intersphinx: the documentation builds without network access.
exclude_patterns = ["_build"]
html_theme = "alabaster"
