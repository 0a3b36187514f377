"""The language-model core: corpus, vocabulary, the LSTM, training, sampling, evaluation, checkpoints.

Knows nothing of verse: it reads and writes characters. Imports nothing from `poetgen.verse` or
`poetgen.app`.
"""
