"""Fine-tuning methods: one file each, one small interface (:class:`Method`), one registry."""

from forgetlab.methods.base import Method, method_class, method_names, register_method

__all__ = ["Method", "method_class", "method_names", "register_method"]
