"""poetgen: a character-level LSTM poetry and text generator for the command line."""

__version__ = "0.1.0"
