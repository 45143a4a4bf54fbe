"""gacd: transfer adversarial robustness from a robust teacher to a student, and measure it."""

from gacd.engine.export import export_model, load_model

__version__ = "0.1.0"
__all__ = ["__version__", "export_model", "load_model"]
