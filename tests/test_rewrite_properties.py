"""One rewrite rule: every fast path gives the bytes of its definition.

``rewrite_row_line`` is the definition of the backup's rewrite (a reply's
row line -> the dump line of its document); the block fast path
(``rewrite_rows_fast`` and ``rewrite_row_block``), ``LongRow`` (a line too
long to hold, streamed through), ``JsonRowScanner`` (a reply read value by
value) and ``Leaf`` (a revision read from ``_bulk_get``) must give the same
bytes on generated rows: long lines, CRLF, ``,"doc":`` inside documents,
non-ASCII text raw or escaped, ids with quotes and backslashes, design
documents.  Likewise ``document_revision`` reads a dump line's id and
revision as ``dump_line_document`` (the parse) does.

The examples come from the "ci" profile of test_properties.py
(derandomized); ``HYPOTHESIS_EXAMPLES=N`` searches harder.
"""

import json

from hypothesis import example, given, settings, strategies as st

import test_properties  # noqa: F401  (registers and loads the shared Hypothesis profile)
from test_properties import cd

# -- strategies ---------------------------------------------------------------

# Characters that break a naive rewrite: quotes, backslashes, braces, the
# row's own separators, controls JSON escapes, non-ASCII (two, three and four
# bytes in UTF-8).
TRICKY = '"\\{}[],:\n\t\x01 é日😀'
text = st.text(alphabet=st.one_of(st.sampled_from(TRICKY), st.sampled_from("abcxyz_/-")), max_size=12)
ids = st.one_of(
    st.sampled_from(["a", "doc-1", "_design/app", "_design/x\"y", 'q"uote', "back\\slash", "é", ',"doc":{']),
    text.filter(bool),
    text.map(lambda t: "_design/" + t))
# Pieces that look like the row's structure, inside a document.
SNARES = [',"doc":', '"},"doc":', "}},", "}}", '{"id":', "\r", "\r\n", "]}"]
values = st.one_of(text, st.sampled_from(SNARES), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                   st.none(), st.lists(text, max_size=3))


@st.composite
def documents(draw):
    """``(id, the document's JSON text as CouchDB writes it: compact, raw or escaped non-ASCII)``."""
    doc_id = draw(ids)
    body = {"_id": doc_id, "_rev": "%d-%s" % (draw(st.integers(1, 99)), draw(st.sampled_from(["a", "9f", "abc"])))}
    for key in draw(st.lists(st.one_of(text, st.sampled_from(["doc", "id", "value", "_revisions"])), max_size=4)):
        body[key] = draw(values)
    # A long line: one value repeated past the small thresholds the tests set.
    body["long"] = draw(text) * draw(st.sampled_from([0, 1, 8, 40]))
    return doc_id, json.dumps(body, ensure_ascii=draw(st.booleans()), separators=(",", ":"))


def row_line(doc_id, doc_text):
    """A row of CouchDB's ``_all_docs?include_docs=true`` reply, one a line."""
    quoted = json.dumps(doc_id, ensure_ascii=False)
    rev = json.loads(doc_text)["_rev"]
    return ('{"id":%s,"key":%s,"value":{"rev":"%s"},"doc":%s}' % (quoted, quoted, rev, doc_text)).encode("utf-8")


def reply_body(docs, crlf):
    """The reply after its header line: rows a line, commas between, the footer."""
    end = b"\r\n" if crlf else b"\n"
    rows = (b"," + end).join(row_line(doc_id, doc_text) for doc_id, doc_text in docs)
    return rows + end + b"]}\n"


def defined(body):
    """The definition: ``rewrite_row_line`` on each line, carriage returns removed."""
    return b"\n".join(cd.rewrite_row_line(line) for line in body.replace(b"\r", b"").split(b"\n"))


def cut(data, cuts):
    blocks, position = [], 0
    for size in cuts:
        blocks.append(data[position:position + size])
        position += size
    return blocks + [data[position:]]


# -- the block fast path ------------------------------------------------------

@given(st.lists(documents(), min_size=1, max_size=6), st.booleans())
def test_the_block_fast_path_gives_the_bytes_of_the_rule(docs, crlf):
    end = b"\r\n" if crlf else b"\n"
    block = b"".join(row_line(doc_id, doc_text) + b"," + end for doc_id, doc_text in docs)
    expected = defined(block)
    fast = cd.rewrite_rows_fast(block)
    quoted = [json.dumps(doc_id, ensure_ascii=False)[1:-1] for doc_id, _ in docs]
    if all('"' not in text and "\\" not in text for text in quoted):
        assert fast is not None, "the fast path does not take a block of plain rows"
    if fast is not None:
        assert bytes(fast[0]) == expected and fast[1] == len(docs)
    data, rows, carriage_returns, designs = cd.rewrite_row_block(block, count_designs=True)
    assert bytes(data) == expected
    assert rows == len(docs) and carriage_returns == block.count(b"\r")
    assert designs == sum(1 for doc_id, _ in docs if doc_id.startswith("_design/"))


# -- LongRow and the block path, as the backup streams a reply ----------------

@given(st.lists(documents(), max_size=6), st.booleans(), st.lists(st.integers(1, 200), max_size=30),
       st.integers(0, 120), st.integers(1, 400))
def test_a_reply_streamed_in_any_blocks_gives_the_bytes_of_the_rule(docs, crlf, cuts, long_from, inline_from):
    body = reply_body(docs, crlf)
    layout = cd.CouchDBLayout(len(docs), count_designs=True)
    layout.LONG = long_from                  # lines longer than this stream through LongRow
    layout.calls.INLINE_FROM = inline_from   # blocks this large go straight to the function
    pieces = []
    for block in cut(body, cuts):
        pieces += layout.feed(block)
    pieces += layout.finish()
    assert b"".join(pieces) == defined(body)
    assert layout.rows == len(docs) and layout.carriage_returns == body.count(b"\r")
    assert layout.designs == sum(1 for doc_id, _ in docs if doc_id.startswith("_design/"))


@given(documents(), st.booleans(), st.booleans(), st.lists(st.integers(1, 50), max_size=20))
def test_a_long_row_gives_the_bytes_of_the_rule(doc, comma, crlf, cuts):
    line = row_line(*doc) + (b"," if comma else b"")
    if crlf:   # carriage returns anywhere, the line's end included: removed throughout
        line = line.replace(b"\\n", b"\r\\n") + b"\r"
    blocks = cut(line, cuts)
    held = blocks.pop(0)
    long_row = cd.LongRow.start(held, True)
    while long_row is None:                  # the row's document has not begun: held longer
        held += blocks.pop(0)
        long_row = cd.LongRow.start(held, True)
    out = long_row.head + b"".join(long_row.middle(block) for block in blocks) + long_row.end(b"")
    assert out == cd.rewrite_row_line(line.replace(b"\r", b""))
    assert long_row.carriage_returns == line.count(b"\r")


# -- replies read value by value ----------------------------------------------

@given(st.lists(documents(), max_size=6), st.booleans(), st.lists(st.integers(1, 300), max_size=30))
def test_the_json_scanner_gives_the_documents_of_the_rule_on_couchdbs_layout(docs, crlf, cuts):
    end = b"\r\n" if crlf else b"\n"
    reply = b'{"total_rows":%d,"offset":0,"rows":[' % len(docs) + end + reply_body(docs, crlf)
    scanner = cd.JsonRowScanner()
    found = []
    for block in cut(reply, cuts):
        found += scanner.feed(block)
    found += scanner.finish()
    assert [doc + b"," for doc in found] == [
        cd.rewrite_row_line(row_line(*doc) + b",") for doc in docs]
    assert scanner.rows == len(docs)
    assert scanner.designs == sum(1 for doc_id, _ in docs if doc_id.startswith("_design/"))


@given(st.lists(documents(), min_size=1, max_size=6))
def test_a_revision_read_from_bulk_get_is_the_line_of_the_rule(docs):
    results = ",".join('{"id":%s,"docs":[{"ok":%s}]}' % (json.dumps(doc_id), doc_text) for doc_id, doc_text in docs)
    leaves, missing = cd.read_bulk_get('{"results":[%s]}' % results)
    assert [leaf.line + b"," for leaf in leaves] == [cd.rewrite_row_line(row_line(*doc) + b",") for doc in docs]
    assert missing == []
    for doc_id, doc_text in docs:
        leaves, _ = cd.read_open_revs('[{"ok":%s}]' % doc_text)
        assert leaves[0].line + b"," == cd.rewrite_row_line(row_line(doc_id, doc_text) + b",")


# -- a dump line's id and revision --------------------------------------------

KEYS = ["_id", "_rev", "\\u005fid", "_re\\u0076", "a", "doc", "_revisions"]


@st.composite
def dump_lines(draw):
    """A dump line: the script's layout or any other order, keys given twice or
    escaped, blanks, a comma, a carriage return, a newline; or no document."""
    if draw(st.booleans()):
        doc_id, doc_text = draw(documents())
        body = doc_text.encode("utf-8")
    else:
        keys = draw(st.lists(st.sampled_from(KEYS), max_size=4))
        if draw(st.booleans()):   # the script's layout first, then anything: a key again, escaped or not
            keys = ["_id", "_rev"] + keys + draw(st.sampled_from([[], ["_id"], ["_rev"], ["\\u005fid"]]))
        members = [(key, draw(st.one_of(st.sampled_from(["a", "b", "c"]), text, st.integers()))) for key in keys]
        ascii_only = draw(st.booleans())
        body = ("{" + ",".join('"%s":%s' % (key, json.dumps(value, ensure_ascii=ascii_only)) for key, value in members)
                + "}").encode("utf-8")
    body = draw(st.sampled_from([body] * 6 + [b"", b"]}", cd.BACKUP_HEADER, b"  " + body, body[:-1]]))
    return body + draw(st.sampled_from([b"", b",", b", ", b",\t", b"\r", b",\r"])) + draw(
        st.sampled_from([b"", b"\n"]))


def id_and_revision_by_parsing(line):
    doc = cd.dump_line_document(line)
    if doc is None:
        return None, None
    return tuple(value if isinstance(value, str) else None for value in (doc.get("_id"), doc.get("_rev")))


@settings(max_examples=max(300, test_properties.EXAMPLES))   # cheap: no server, no file
@given(dump_lines())
@example(b'{"_id":"a","_rev":"1-b","_id":"c"},\n')          # a key twice: the parse takes the last
@example(b'{"_id":"a","_rev":"1-b","\\u005fid":"c"}\r\n')   # and "\u005fid" is "_id"
@example(b'{"_id":"a","_rev":"1-b"},\r')                     # a carriage return: parsed as white space
def test_the_id_and_revision_of_a_dump_line_are_those_its_parse_gives(line):
    if cd.dump_line_document(line) is None and not line.rstrip(b"\r\n, \t").endswith(b"}"):
        assert cd.document_revision(line) == (None, None)
    elif cd.dump_line_document(line) is not None:   # the check lets no other line through
        assert cd.document_revision(line) == id_and_revision_by_parsing(line)


@settings(max_examples=max(300, test_properties.EXAMPLES))   # cheap: no server, no file
@given(st.lists(dump_lines().map(lambda line: line[:-1] if line.endswith(b"\n") else line), max_size=8))
@example([b'{"_id":"a","_rev":"1"}', b'{"_id":"b","_rev":"1","o":{"_id":"c"}}'])   # a key twice over the lines
@example([b'{"_id":"\xff","_rev":"1"}'])                                             # no UTF-8
def test_the_revisions_of_a_chunk_read_at_once_are_those_read_line_by_line(lines):
    assert cd.document_revisions(lines) == [cd.document_revision(line) for line in lines]
