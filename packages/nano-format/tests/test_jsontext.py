"""parse_json: every way json.loads can fail is one JSONTextError with the reason in words."""

import pytest

from nano_format import JSONTextError, parse_json


def test_values_parse_as_json_loads_does():
    assert parse_json('{"a": [1, 2.5, "x", null, true]}') == {"a": [1, 2.5, "x", None, True]}
    assert parse_json('{"a": 1, "a": 2}') == {"a": 2}  # json's own rule, unless unique_keys
    assert parse_json('{"a": {"b": 1}, "c": 2}', unique_keys=True) == {"a": {"b": 1}, "c": 2}


@pytest.mark.parametrize("text,why", [
    ("{not json", r"^Expecting property name enclosed in double quotes at line 1 column 2$"),
    ('{\n"a": }', r"^Expecting value at line 2 column 6$"),
    ("[" * 100_000 + "]" * 100_000, r"^arrays or objects nested too deeply$"),  # json: RecursionError
    ('{"n": ' + "9" * 5000 + "}", r"^a number with too many digits$"),  # json: a plain ValueError
])
def test_every_failure_is_one_error(text, why):
    with pytest.raises(JSONTextError, match=why):
        parse_json(text)


def test_duplicate_keys_at_any_depth_with_unique_keys():
    with pytest.raises(JSONTextError, match=r"^duplicate key 'b': it appears twice in one JSON object$"):
        parse_json('{"a": {"b": 1, "b": 2}}', unique_keys=True)
    with pytest.raises(JSONTextError, match=r"^duplicate key 'xxxxx.*\.\.\.: it appears"):
        parse_json('{"%s": 1, "%s": 2}' % ("x" * 10_000, "x" * 10_000), unique_keys=True)  # the key is cut short


def test_it_is_a_value_error():
    assert issubclass(JSONTextError, ValueError)  # callers that catch ValueError keep working
