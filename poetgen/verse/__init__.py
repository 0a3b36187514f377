"""Verse: prosody tables (平水韵, 中华新韵, 平仄 templates), constrained decoding, the checker,
generation metrics and the corpus tools that build verse corpora.

Builds on `poetgen.lm`; imports nothing from `poetgen.app`.
"""
