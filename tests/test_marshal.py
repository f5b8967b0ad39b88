"""hsm's own XML-RPC answer writer and reader, checked against the standard library's reader and writer."""

import xmlrpc.client

import pytest

from hsm.rpc.marshal import INT_MAX, dump_answer, load_answer

ANSWER = {"status": {"code": 0, "message": "OK"}, "strings": ["", "a<b&c>d", "two\nlines", "ünï"],
          "numbers": [-5, INT_MAX, INT_MAX + 1, 1.5], "flags": [True, False], "blob": b"\x00\xff",
          "nested": {"empty": {}, "list": [], "deep": [{"k": [1, [2, {"x": "y"}]]}]}}


def test_the_standard_library_reads_what_hsm_writes():
    (read,), _ = xmlrpc.client.loads(dump_answer(ANSWER), use_builtin_types=True)
    assert read["numbers"] == [-5, INT_MAX, str(INT_MAX + 1), 1.5]  # past 32 bits: a decimal string
    assert read["strings"] == ANSWER["strings"] and read["nested"] == ANSWER["nested"]
    assert read["blob"] == b"\x00\xff" and read["flags"] == [True, False]


def test_none_is_left_out_of_structs_and_empty_in_lists():
    (read,), _ = xmlrpc.client.loads(dump_answer({"a": None, "b": [None, 1]}))
    assert read == {"b": ["", 1]}


def test_hsm_reads_what_the_standard_library_writes():
    plain = {**ANSWER, "numbers": [-5, INT_MAX, 1.5], "none": None}
    body = xmlrpc.client.dumps((plain,), methodresponse=True, allow_none=True).encode()  # with its newlines
    assert load_answer(body) == plain
    assert load_answer(dump_answer(plain)) == {k: v for k, v in plain.items() if k != "none"}
    bare = b"<?xml version='1.0'?><methodResponse><params><param><value>bare</value></param></params></methodResponse>"
    assert load_answer(bare) == "bare"


def test_faults_are_raised():
    body = xmlrpc.client.dumps(xmlrpc.client.Fault(-32601, "no such verb"), methodresponse=True).encode()
    with pytest.raises(xmlrpc.client.Fault) as raised:
        load_answer(body)
    assert raised.value.faultCode == -32601 and raised.value.faultString == "no such verb"


@pytest.mark.parametrize("text", ["plain-id", "", " padded ", "a\tb", "<&>", "ünï"])
def test_strings_read_back_the_same_by_the_stdlib_and_by_hsm(text):
    """Strings go untyped (XML-RPC's default type) unless empty or edged with whitespace: both readers agree."""
    body = dump_answer({"status": {"code": 0, "message": ""}, "value": text, "list": [text, text]})
    assert xmlrpc.client.loads(body)[0][0]["value"] == text
    assert load_answer(body)["list"] == [text, text]
