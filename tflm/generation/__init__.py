"""Generation: one request -> response pipeline over a decode loop.

- `spec`: every control, checked in Python and in the graph, and each
  exported signature's inputs and outputs.
- `pipeline`: prepare (template, tokenize, truncate, pad, bucket), decode,
  finish; the typed `Request`, `Prepared` and `Response`.
- `loop` (sampling) and `beam` (beam search): two loops over one
  `Decoding` step; `samplers` and `processors` choose tokens.
- `text` (cutting, stop strings) and `templating` (chat templates).
- `generator`: the pipeline traced for in-process `generate`/`stream`.
"""
