"""The one crash-safe writer: model directories, exports, tokenizers, and
single files (`write_file`: a GGUF export).

`write_directory(target, write)` fills a hidden temporary folder beside
`target` (`.NAME.tflm-tmp-OWNER-XXXX`), flushes every file and folder to
disk, and moves it into place in one step: a crash or a kill leaves the old
directory or the new one, never half of either. Replacing an existing
directory needs `overwrite=True`; entries the writer does not own (a user's
notes, TensorBoard logs) are moved into the new directory, never lost.

On Linux the swap is `renameat2(RENAME_EXCHANGE)` (the target never goes
missing) and a first write is `renameat2(RENAME_NOREPLACE)` (it never
replaces what another process just wrote). Elsewhere the old directory is
renamed aside (`.NAME.tflm-old-OWNER-XXXX`) first. Leftovers of killed runs
carry their owner (host and pid) in their name; the next write of the same
target restores, carries over or deletes those whose process is gone.

`lock(target)` keeps two processes from writing one target at once.
`check_space` refuses a write that cannot fit before it starts, and a disk
that fills up anyway is a `NoSpaceError` naming the folder.
"""

from tflm.atomic.fs import NoSpaceError
from tflm.atomic.fs import check_space
from tflm.atomic.fs import free_bytes
from tflm.atomic.fs import is_no_space
from tflm.atomic.fs import megabytes
from tflm.atomic.fs import no_space
from tflm.atomic.fs import tree_size
from tflm.atomic.locking import lock
from tflm.atomic.writer import existing_entries
from tflm.atomic.writer import publish
from tflm.atomic.writer import resolve
from tflm.atomic.writer import staged
from tflm.atomic.writer import sweep
from tflm.atomic.writer import write_directory
from tflm.atomic.writer import write_file

__all__ = [
    "NoSpaceError",
    "check_space",
    "existing_entries",
    "free_bytes",
    "is_no_space",
    "lock",
    "megabytes",
    "no_space",
    "publish",
    "resolve",
    "staged",
    "sweep",
    "tree_size",
    "write_directory",
    "write_file",
]
