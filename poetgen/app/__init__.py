"""The application: the `poetgen` command line, the REPL, progress bars, rendering and plots.

The only layer that prints. It calls the core through `poetgen.generate` and `poetgen.lm`.
"""
