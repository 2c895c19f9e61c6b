"""Parsing JSON text that may be hostile: the one implementation the Nano packages share.

    parse_json(text, unique_keys=False) -> value      or JSONTextError, whatever the text

json.loads fails in more ways than JSONDecodeError: RecursionError for arrays or
objects nested deeper than the interpreter's recursion limit, a plain ValueError
for an integer past Python's digit limit (sys.set_int_max_str_digits). Vocabularies,
configs, datasets' meta.json, SFT lines and run logs all read text a user (or an
attacker) wrote; each gets one error type with the reason in words.
"""

from __future__ import annotations

import json

__all__ = ["JSONTextError", "parse_json"]


class JSONTextError(ValueError):
    """Text that is not the JSON asked for; str() is the reason in words."""


class _DuplicateKey(Exception):
    pass


def _unique(pairs: list) -> dict:
    # json keeps the last of duplicate keys silently: {"n_layer": 2, "n_layer": 3} is a mistake, not 3
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str, *, unique_keys: bool = False):
    """json.loads(text), failing only with JSONTextError. unique_keys: a key given
    twice in one object is an error (json keeps the last one)."""
    try:
        return json.loads(text, object_pairs_hook=_unique if unique_keys else None)
    except _DuplicateKey as e:
        key = repr(e.args[0][:61])
        raise JSONTextError(f"duplicate key {key if len(key) <= 60 else key[:60] + '...'}: it appears twice "
                            "in one JSON object") from None
    except json.JSONDecodeError as e:
        if e.pos == 0 and text.startswith("\ufeff"):  # json's own words suggest a Python codec
            raise JSONTextError("starts with a byte order mark (U+FEFF); save it as UTF-8 without one") from None
        msg = e.msg.removesuffix(" at")  # "Invalid control character at", followed by our " at line ..."
        raise JSONTextError(f"{msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise JSONTextError("arrays or objects nested too deeply") from None
    except ValueError:  # json's only other ValueError
        raise JSONTextError("a number with too many digits") from None
