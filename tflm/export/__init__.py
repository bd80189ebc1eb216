"""SavedModel export with the serving contract's signatures."""

from tflm.export.saved_model import existing_versions
from tflm.export.saved_model import export
from tflm.export.signatures import ServingModule

__all__ = ["ServingModule", "existing_versions", "export"]
