"""The application: the `poetgen` command line, the REPL (repl: session and commands; terminal:
its prompt_toolkit front end), progress bars, rendering and plots.

The only layer that prints. It calls the core through `poetgen.generate` and `poetgen.lm`.
"""
