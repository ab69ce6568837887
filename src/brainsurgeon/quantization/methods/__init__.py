"""Quantization methods, one file each; each registers its config type and handler.

Every module here is imported on package import, so a new method is a new file.
"""

import importlib
import pkgutil

# Import every method module so each registers itself.
for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
