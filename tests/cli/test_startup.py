"""`tflm --help` is fast: building the parsers loads no TensorFlow."""

import subprocess
import sys


def test_help_imports_no_tensorflow():
    """`tflm --help` took 5.3 s: building the parsers imported TensorFlow."""
    code = (
        "import sys\nfrom tflm import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "for command in ('generate', 'train', 'quickstart'):\n"
        "    try:\n        cli.main([command, '--help'])\n"
        "    except SystemExit:\n        pass\n"
        "print(sorted(m for m in sys.modules\n"
        "             if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
