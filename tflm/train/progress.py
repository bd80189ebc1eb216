"""The progress line of `tflm train` and `tflm finetune`.

A run is cut into chunks of steps that end at its checkpoints and
validations (Keras calls them epochs; they are not passes over the data),
so the line names the chunk by its steps, `steps 301-400 of 1000`, then the
step, a recent loss (the mean of the last `window` steps' losses, not the
mean since the chunk began, which lags far behind a falling loss), tokens
per second and the time left.

On a terminal one line is rewritten in place (a carriage return, no ANSI
codes) and each chunk's last state stays on the screen. Written to a file
or a pipe it is a plain line every `every` steps and at each chunk's end,
with no carriage returns, backspaces or escape codes, so the log reads as
text.
"""

from __future__ import annotations

import collections
import math
import shutil
import sys
from typing import TextIO


def _duration(seconds: float) -> str:
    """`1:02:03` or `2:03`."""
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{seconds:02d}"
    return f"{minutes}:{seconds:02d}"


class ProgressBar:
    """Writes where a run is and how it goes, one line at a time.

    Args:
        total_steps: the run's last step.
        chunk_steps: steps between two checkpoints or validations (the
            chunks start at step 1 and repeat every `chunk_steps`).
        tokens_per_step: tokens in one global batch, for the time left.
        stream: where to write; defaults to `sys.stdout`.
        window: steps the shown loss is the mean of.
        every: steps between lines when `stream` is not a terminal.
        interactive: rewrite one line in place; defaults to whether
            `stream` is a terminal.

    Example:
    >>> import io
    >>> out = io.StringIO()
    >>> bar = ProgressBar(total_steps=4, chunk_steps=2, tokens_per_step=8,
    ...                   stream=out, every=10)
    >>> for step in (1, 2):
    ...     bar.update(step, loss=5.0 - step, tokens_per_second=16.0)
    >>> bar.end_chunk()
    >>> print(*out.getvalue().split(", "), sep="\\n", end="")
    steps 1-2 of 4: step 2
    loss 3.5000 (mean of the last 2 steps)
    16 tokens/s
    0:01 left
    """

    def __init__(
        self,
        *,
        total_steps: int,
        chunk_steps: int,
        tokens_per_step: int,
        stream: TextIO | None = None,
        window: int = 20,
        every: int = 10,
        interactive: bool | None = None,
    ):
        self.total_steps = total_steps
        self.chunk_steps = max(chunk_steps, 1)
        self.tokens_per_step = tokens_per_step
        self.stream = stream if stream is not None else sys.stdout
        self.window = window
        self.every = max(every, 1)
        if interactive is None:
            isatty = getattr(self.stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self.losses: collections.deque = collections.deque(maxlen=window)
        self.line = ""  # What the terminal shows, not ended yet.
        self.step = 0
        self.rate = 0.0

    def chunk(self, step: int) -> tuple[int, int]:
        """The first and last steps of the chunk holding `step`."""
        first = (step - 1) // self.chunk_steps * self.chunk_steps + 1
        return first, min(first + self.chunk_steps - 1, self.total_steps)

    def update(self, step: int, loss: float, tokens_per_second: float):
        """Records step `step`'s loss and shows the line."""
        if math.isfinite(loss):
            self.losses.append(loss)
        self.step = step
        self.rate = tokens_per_second
        if self.interactive:
            self._show(self._text())
        elif step % self.every == 0 and step != self.chunk(step)[1]:
            self._print(self._text())  # `end_chunk` prints a chunk's last.

    def end_chunk(self, validation_loss: float | None = None):
        """Ends the chunk at the last step with its state, and the
        validation loss measured there, if any."""
        if not self.step:
            return
        text = self._text()
        if validation_loss is not None:
            text += f", validation loss {validation_loss:.4f}"
        self._print(text)

    def close(self) -> None:
        """Ends a line left open on the terminal (an interrupt, an error)."""
        if self.line:
            self.stream.write("\n")
            self.stream.flush()
            self.line = ""

    def _text(self) -> str:
        parts = [f"step {self.step}"]
        if self.losses:
            mean = sum(self.losses) / len(self.losses)
            count = len(self.losses)
            steps = "step" if count == 1 else f"{count} steps"
            parts.append(f"loss {mean:.4f} (mean of the last {steps})")
        parts.append(f"{self.rate:,.0f} tokens/s")
        if self.rate > 0:
            left = self.total_steps - self.step
            seconds = left * self.tokens_per_step / self.rate
            parts.append(f"{_duration(seconds)} left")
        first, last = self.chunk(self.step)
        chunk = f"steps {first}-{last} of {self.total_steps}"
        return f"{chunk}: {', '.join(parts)}"

    def _show(self, text: str) -> None:
        width = shutil.get_terminal_size().columns - 1
        text = text[:width]
        padding = " " * max(len(self.line) - len(text), 0)
        # Recorded before the write: a Ctrl-C that lands in the write
        # still finds the line open, and `close` ends it.
        self.line = text
        self.stream.write("\r" + text + padding)
        self.stream.flush()

    def _print(self, text: str) -> None:
        if self.interactive:
            self._show(text)
            self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self.line = ""
