"""Data: text files to `(x, y, sample_weight)` batches, with tf.data."""

from tflm.data.cache import default_cache_dir
from tflm.data.corpus import check_utf8
from tflm.data.corpus import find_invalid_utf8
from tflm.data.corpus import iter_documents
from tflm.data.corpus import read_document_batches
from tflm.data.corpus import read_documents
from tflm.data.corpus import sample_texts
from tflm.data.files import find_files
from tflm.data.files import skip_reason
from tflm.data.pipeline import make_dataset
from tflm.data.pipeline import pack_windows
from tflm.data.pipeline import token_stream
from tflm.data.prepared import prepared_directory
from tflm.data.shards import prepare
from tflm.data.split import choose_split
from tflm.data.split import is_validation
from tflm.data.split import resolve_split
from tflm.data.split import select_split
from tflm.data.split import split_documents

__all__ = [
    "check_utf8",
    "choose_split",
    "default_cache_dir",
    "find_files",
    "find_invalid_utf8",
    "is_validation",
    "iter_documents",
    "make_dataset",
    "pack_windows",
    "prepare",
    "prepared_directory",
    "read_document_batches",
    "read_documents",
    "resolve_split",
    "sample_texts",
    "select_split",
    "skip_reason",
    "split_documents",
    "token_stream",
]
