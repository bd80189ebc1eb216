"""Data: text files to `(x, y, sample_weight)` batches, with tf.data."""

from tflm.data.corpus import check_utf8
from tflm.data.corpus import find_files
from tflm.data.corpus import iter_documents
from tflm.data.corpus import read_document_batches
from tflm.data.corpus import read_documents
from tflm.data.corpus import sample_texts
from tflm.data.pipeline import is_validation
from tflm.data.pipeline import make_dataset
from tflm.data.pipeline import pack_windows
from tflm.data.pipeline import token_stream

__all__ = [
    "check_utf8",
    "find_files",
    "is_validation",
    "iter_documents",
    "make_dataset",
    "pack_windows",
    "read_document_batches",
    "read_documents",
    "sample_texts",
    "token_stream",
]
