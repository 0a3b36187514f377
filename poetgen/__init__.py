"""poetgen: a character-level LSTM poetry and text generator.

    import poetgen
    poet = poetgen.load("default")                 # the bundled Tang model (or a checkpoint path)
    print(poet.write(form="七绝", seed=7)[0].text)  # form, rhyme and tones guaranteed
    poetgen.check("白日依山尽，黄河入海流。欲穷千里目，更上一层楼。").ok

Importing poetgen is cheap: torch is imported only when a model is loaded (`load`, `Poet`), so
`check` and the corpus tools start fast. See poetgen/api.py for the whole API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from poetgen.errors import (CheckpointError, ConfigError, ConstraintError, CorpusError,
                            FileSystemError, PoetgenError)
from poetgen.settings import GenerationSettings

if TYPE_CHECKING:
    from poetgen.api import Poet, load
    from poetgen.verse.check import Report

__version__ = "0.1.0"


def check(poem: str, rhyme: str = "pingshui", tones: str = "loose", readings: str = "all",
          sanzewei: bool = False) -> "Report":
    """Check a poem's form, rhyme and tones: a Report with every character and violation.

    rhyme: "pingshui" (平水韵) or "modern" (中华新韵); tones: "loose", "strict" or "off";
    readings: "all" (a rare reading is allowed, with a warning) or "common" (it fails);
    sanzewei: warn about lines ending in three 仄. `report.ok` is True when nothing is violated
    (`report.verdict` says what the poem is, `report.warnings` and `report.notes` the rest);
    `report.to_dict()` gives plain data.
    """
    from poetgen.verse.check import check_poem

    if not isinstance(poem, str):
        raise ConfigError(f"check needs the poem's text (a str), not {poem!r}")
    return check_poem(poem, rhyme=rhyme, tones=tones, readings=readings, sanzewei=sanzewei)


def __getattr__(name: str):
    if name in ("load", "Poet"):  # these import torch: only on first use
        from poetgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'poetgen' has no attribute {name!r}")


__all__ = ["load", "Poet", "check", "GenerationSettings", "PoetgenError", "CheckpointError",
           "ConfigError", "ConstraintError", "CorpusError", "FileSystemError", "__version__"]
