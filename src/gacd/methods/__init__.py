"""Training methods, one file each, registered by name."""

from gacd.methods.base import (
    Method,
    MethodContext,
    build_method,
    method_class,
    method_names,
    method_options,
    register_method,
)

__all__ = [
    "Method",
    "MethodContext",
    "build_method",
    "method_class",
    "method_names",
    "method_options",
    "register_method",
]
