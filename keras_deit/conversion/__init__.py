"""`keras_deit.conversion` when running from a source checkout.

The conversion modules live in the repository's top-level `conversion/` folder. An installed
wheel holds them here, as `keras_deit/conversion/` (the package-dir mapping in
pyproject.toml copies that folder in place of this file). From a checkout on `sys.path`
(`PYTHONPATH=$PWD`, or an editable install, whose finder defers to this file) this stand-in
points the package's `__path__` at that folder and runs its `__init__.py`, so both read the
same modules under the same names.
"""

import os

__path__ = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "conversion")]
__file__ = os.path.join(__path__[0], "__init__.py")
with open(__file__, encoding="utf-8") as _source:
    exec(compile(_source.read(), __file__, "exec"))
del _source
