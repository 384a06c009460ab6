"""The pure pieces of both pipelines: line rewriting, scanning, chunking."""

import json

import pytest

import couchdb_dump as cd

ROW = b'{"id":"a","key":"a","value":{"rev":"1-x"},"doc":{"_id":"a","_rev":"1-x","n":{"m":1}}}'


def test_row_line_becomes_its_document_with_comma():
    assert cd.rewrite_row_line(ROW + b",") == b'{"_id":"a","_rev":"1-x","n":{"m":1}},'


def test_last_row_line_loses_only_the_row_brace():
    assert cd.rewrite_row_line(ROW) == b'{"_id":"a","_rev":"1-x","n":{"m":1}}'


def test_document_holding_doc_key_is_kept_whole():
    row = b'{"id":"n","key":"n","value":{"rev":"1-y"},"doc":{"_id":"n","_rev":"1-y","doc":{"x":1},"t":2}},'
    assert cd.rewrite_row_line(row) == b'{"_id":"n","_rev":"1-y","doc":{"x":1},"t":2},'


def test_id_with_quotes_and_doc_marker_is_not_mistaken():
    doc_id = 'q"},"doc":{'
    row = json.dumps({"id": doc_id, "key": doc_id, "value": {"rev": "1-z"}}, separators=(",", ":"))
    row = row[:-1] + ',"doc":{"_id":%s,"_rev":"1-z"}}' % json.dumps(doc_id)
    assert cd.rewrite_row_line(row.encode()) == b'{"_id":%s,"_rev":"1-z"}' % json.dumps(doc_id).encode()


def test_non_row_lines_pass_unchanged():
    assert cd.rewrite_row_line(b"") == b""
    assert cd.rewrite_row_line(b"]}") == b"]}"


def test_block_rewrite_counts_rows_and_fixes_braces():
    block = ROW + b",\n" + ROW + b"\n]}\n"
    out, rows = cd.rewrite_couchdb_block(block)
    doc = b'{"_id":"a","_rev":"1-x","n":{"m":1}}'
    assert rows == 2 and out == doc + b",\n" + doc + b"\n]}\n"


def couchdb_reply(docs, cut=None):
    rows = [b'{"id":"%s","key":"%s","value":{"rev":"%s"},"doc":%s}' % (
        d["_id"].encode(), d["_id"].encode(), d["_rev"].encode(),
        json.dumps(d, separators=(",", ":")).encode()) for d in docs]
    body = b'{"total_rows":%d,"offset":0,"rows":[\r\n' % len(docs) + b",\r\n".join(rows) + b"\r\n]}\n"
    return body if cut is None else body[:cut]


def run_layout(body, block=7):
    body = body.replace(b"\r", b"")
    first, _, rest = body.partition(b"\n")
    header = cd._COUCHDB_HEADER.match(first)
    layout = cd.CouchDBLayout(int(header.group(1)))
    out = [cd.BACKUP_HEADER + b"\n"]
    for i in range(0, len(rest), block):
        out.extend(layout.feed(rest[i:i + block]))
    out.extend(layout.finish())
    return b"".join(out)


DOCS = [{"_id": "d%d" % i, "_rev": "1-%d" % i, "v": {"w": [i]}} for i in range(5)]


def test_layout_is_the_same_whatever_the_block_size():
    expected = run_layout(couchdb_reply(DOCS), block=1 << 20)
    for size in (1, 2, 3, 17, 64):
        assert run_layout(couchdb_reply(DOCS), block=size) == expected
    assert expected.startswith(cd.BACKUP_HEADER + b'\n{"_id":"d0"')
    assert expected.endswith(b'"v":{"w":[4]}}\n]}\n')


def test_layout_refuses_a_reply_without_footer():
    body = couchdb_reply(DOCS)
    cut = body.rindex(b"]}")
    with pytest.raises(cd.BackupFailed):
        run_layout(body[:cut])


def test_layout_refuses_missing_rows_even_with_footer():
    body = couchdb_reply(DOCS).replace(b'{"total_rows":5', b'{"total_rows":6')
    with pytest.raises(cd.BackupFailed):
        run_layout(body)


def scan(body, block=5):
    scanner = cd.JsonRowScanner()
    docs = []
    for i in range(0, len(body), block):
        docs.extend(scanner.feed(body[i:i + block]))
    docs.extend(scanner.finish())
    return docs, scanner


def test_scanner_reads_a_one_line_reply_with_any_field_order():
    body = (b'{"total_rows":2,"offset":0,"rows":[{"key":"a","id":"a","value":{"rev":"1-a"},'
            b'"doc":{"x":1.50,"s":"\\u00e9,\\"doc\\":","_id":"a","_rev":"1-a"}},'
            b'{"doc":{"_id":"b","_rev":"2-b"},"id":"b","key":"b","value":{"rev":"2-b"}}]}')
    docs, scanner = scan(body)
    assert docs == [b'{"x":1.50,"s":"\\u00e9,\\"doc\\":","_id":"a","_rev":"1-a"}', b'{"_id":"b","_rev":"2-b"}']
    assert scanner.total_rows == 2


def test_scanner_joins_a_pretty_printed_document_on_one_line():
    pretty = json.dumps({"total_rows": 1, "rows": [{"id": "a", "doc": {"_id": "a", "t": "x  y\n"}}]}, indent=2)
    docs, _ = scan(pretty.encode())
    assert docs == [b'{"_id":"a","t":"x  y\\n"}']


def test_scanner_keeps_unicode_bytes():
    body = json.dumps({"total_rows": 1, "rows": [{"id": "é", "doc": {"_id": "é", "v": "日本"}}]},
                      ensure_ascii=False).encode()
    docs, _ = scan(body, block=1)
    assert docs == ['{"_id": "é", "v": "日本"}'.encode()]


def test_scanner_refuses_a_cut_reply():
    body = b'{"total_rows":2,"offset":0,"rows":[{"id":"a","doc":{"_id":"a"}},{"id":"b","doc":{"_i'
    with pytest.raises(cd.BackupFailed):
        scan(body)


def test_scanner_refuses_fewer_rows_than_total():
    body = b'{"total_rows":3,"rows":[{"id":"a","doc":{"_id":"a"}}]}'
    with pytest.raises(cd.BackupFailed):
        scan(body)


def test_scanner_waits_for_the_rest_of_a_number():
    body = b'{"total_rows":12,"rows":[' + b",".join(
        b'{"id":"%d","doc":{"_id":"%d"}}' % (i, i) for i in range(12)) + b"]}"
    docs, scanner = scan(body, block=16)
    assert scanner.total_rows == 12 and len(docs) == 12


def test_compact_json_keeps_strings_verbatim():
    assert cd.compact_json('{ "a" : "x  y" ,\n "b":[ 1 , 2 ] }') == '{"a":"x  y","b":[1,2]}'


@pytest.mark.parametrize("name, expected", [
    ("basic.json", "basic-STAMP.json"),
    ("backup", "backup-STAMP"),
    ("a.tar.gz", "a.tar-STAMP.gz"),
    ("dir/out.json", "dir/out-STAMP.json"),
    ("name.", "name.-STAMP"),
    (".hidden", ".hidden-STAMP"),          # bash: -STAMP.hidden (a divergence)
    ("dir/.hidden", "dir/.hidden-STAMP"),
    (".hidden.json", ".hidden-STAMP.json"),
])
def test_timestamp_goes_before_the_extension(name, expected):
    stamp = cd.time.strftime("%Y%m%d-%H%M%S", cd.time.localtime(0))
    assert cd.timestamped_name(name, now=0) == expected.replace("STAMP", stamp)


def test_design_document_in_bash_layout_loses_id_rev_and_comma():
    line = b'{"_id":"_design/a","_rev":"1-abc","views":{}},\n'
    assert cd.design_document_id(line) == "_design/a"
    assert cd.design_document_request(line, "_design/a") == ("/_design/a", b'{"views":{}}\n')


def test_design_document_found_wherever_its_id_stands():
    line = b'{"views":{},"_rev":"1-abc","_id":"_design/a"}\n'
    assert cd.design_document_id(line) == "_design/a"
    assert cd.design_document_request(line, "_design/a") == ("/_design/a", b'{"views":{}}\n')


def test_design_document_name_cannot_escape_the_database():
    line = b'{"_id":"_design/../_users/x","_rev":"1-a","v":1}\n'
    path, _ = cd.design_document_request(line, cd.design_document_id(line))
    assert path == "/_design/..%2F_users%2Fx"


def test_plain_documents_mentioning_design_are_not_design_documents():
    assert cd.design_document_id(b'{"_id":"x","_rev":"1-a","note":"_design/y"},\n') is None


def test_chunk_suffixes_follow_split():
    assert [cd.chunk_suffix(i) for i in (0, 1, 25, 26, 17575)] == ["aaa", "aab", "aaz", "aba", "zzz"]
    assert cd.chunk_suffix(17576) == "aaaa"


class Lines:
    """A stand-in dump: the text it was given, in blocks of two lines."""

    def __init__(self, data):
        self.data = data

    def blocks(self, numbered=True):
        lines = self.data.splitlines(keepends=True)
        for i in range(0, len(lines), 2):
            block = b"".join(lines[i:i + 2])
            yield i + 1, block, block.count(b"\n")


def test_chunks_get_header_and_footer_as_split_files_do():
    text = cd.BACKUP_HEADER + b'\n{"a":1},\n{"b":2},\n{"c":3},\n{"d":4}\n]}\n'
    chunks = list(cd.RestoreText(Lines(text), set(), None).chunks(2))
    head, foot = cd.BACKUP_HEADER + b"\n", b"]}\n"
    assert [c.body for c in chunks] == [
        head + b'{"a":1}\n' + foot,
        head + b'{"b":2},\n{"c":3}\n' + foot,
        head + b'{"d":4}\n' + foot,
    ]
    assert [(c.had_header, c.had_footer) for c in chunks] == [(True, False), (False, False), (False, True)]


def test_restore_text_drops_designs_and_fixes_the_end_document():
    text = b'H\n{"_id":"_design/x"},\n{"a":1},\n{"b":2},\n]}\n'
    survey_lines = {1}
    restored = b"".join(cd.RestoreText(Lines(text), survey_lines, 3).blocks())
    assert restored == b'H\n{"a":1},\n{"b":2}\n]}\n'


def test_chunks_keep_a_missing_final_newline():
    text = b'H\n{"a":1},\n{"b":2}\n]}'
    chunks = list(cd.RestoreText(Lines(text), set(), None).chunks(2))
    assert [c.body for c in chunks] == [b'H\n{"a":1}\n]}\n', b'H\n{"b":2}\n]}']
    assert [c.documents for c in chunks] == [1, 1]
