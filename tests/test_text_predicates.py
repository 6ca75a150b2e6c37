"""curate.text.python_chars: Python's character predicates as character sets for polars."""

import polars as pl

from curate.text import char_class, python_chars


def test_the_scan_finds_every_character_of_the_whole_range():
    """The scan skips unassigned planes; nothing Python accepts lies there."""
    for predicate in ("isspace", "isalnum", "isalpha", "isupper", "islower", "istitle", "isdigit", "isdecimal"):
        test = getattr(str, predicate)
        assert python_chars(predicate) == "".join(chr(c) for c in range(0x110000) if test(chr(c))), predicate


def test_classes_match_what_python_matches_where_polars_defaults_differ():
    """U+001C is whitespace to Python (not to polars' \\s); a combining mark is not a word
    character to Python (it is to polars' \\w); "_" is."""
    s = pl.Series(["a\x1cb", "e\u0301", "a_b", "x²"])
    assert s.str.count_matches(f"[{char_class('isspace')}]").to_list() == [1, 0, 0, 0]
    assert s.str.count_matches(r"\s").to_list() == [0, 0, 0, 0]  # polars' own: why the classes exist
    assert s.str.count_matches(f"[{char_class('isword')}]").to_list() == [2, 1, 3, 2]
    assert s.str.count_matches(f"[{char_class('isdigit')}]").to_list() == [0, 0, 0, 1]
    assert s.str.count_matches(f"[{char_class('isdecimal')}]").to_list() == [0, 0, 0, 0]
