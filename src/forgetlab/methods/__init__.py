"""Fine-tuning methods: one file each, one small interface (:class:`Method`), one registry.

``base`` holds the interface, ``registry`` the name -> class table (it imports no method); each method
module registers itself when imported, and this package imports them all, so importing
``forgetlab.methods`` (or any module in it) fills the table. Imports run package -> methods -> base ->
registry.
"""

# Imported for their @register_method side effect (the order is the one the old lazy loader used).
from forgetlab.methods import block_expansion, full, fullrank, linear, lora, topk  # noqa: F401
from forgetlab.methods.base import Method
from forgetlab.methods.registry import build_method, method_class, method_names, register_method

__all__ = ["Method", "build_method", "method_class", "method_names", "register_method"]
