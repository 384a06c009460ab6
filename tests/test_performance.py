"""What issue #10 pins: behaviour that makes the port fast on a real CouchDB.

Not timed (speed and memory are tests/tools/benchmark.py's business): these tests
pin the behaviour the speed rests on.  The chunk size a restore uses with
--jobs, and backups that come out the same bytes however the server cuts
its reply into HTTP chunks and however long a document is.
"""

import gzip
import json

import pytest
from hypothesis import given, settings, strategies as st

import couchdb_dump
from couch_stub import CouchStub, couchdb_chunks, sized_chunks
from helpers import FOOTER, HEADER, run_port, write_dump


def numbered_dump(path, count):
    write_dump(path, [b'{"_id":"d%05d","_rev":"1-a","n":%d}' % (i, i) for i in range(count)])


def documents_per_bulk_request(stub):
    """The documents of each _bulk_docs body, in the order of their first document."""
    bodies = [json.loads(r.body)["docs"] for r in stub.requests if r.path.endswith("/_bulk_docs")]
    return [len(docs) for docs in sorted(bodies, key=lambda docs: docs[0]["_id"])]


# -l counts the dump's lines, as split does: the first chunk holds the
# header line, the last one the footer.
@pytest.mark.parametrize("options, sizes", [
    (["--jobs", "3"], [499, 500, 500, 500, 201]),
    (["--jobs", "1"], [499, 500, 500, 500, 201]),
    (["--jobs", "3", "-l", "2000"], [1999, 201]),
    (["-l", "2000", "--jobs", "3"], [1999, 201]),
    ([], [2200]),              # the script's 5,000: one body for fewer lines
])
def test_jobs_without_l_restores_in_chunks_of_500_documents(tmp_path, options, sizes):
    numbered_dump(tmp_path / "dump.json", 2200)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-q", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "dump.json"]
                          + options, tmp_path)
        assert result.returncode == 0, result.stdout
        assert documents_per_bulk_request(stub) == sizes
        assert len(stub.store.databases["db"]) == 2200


def test_jobs_without_l_says_the_block_size_it_uses(tmp_path):
    numbered_dump(tmp_path / "dump.json", 1200)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "dump.json", "--jobs", "2"],
                          tmp_path)
    assert result.returncode == 0, result.stdout
    assert b"... INFO: Block import set to 500 lines.\n" in result.stdout


def fill(stub, count):
    """Documents of many sizes (some longer than a CouchDB chunk), design documents, non-ASCII text."""
    docs = stub.store.databases["db"]
    for i in range(count):
        doc_id = "_design/d%d" % i if i % 997 == 0 else "doc%06d" % i
        docs[doc_id] = {"_id": doc_id, "_rev": "1-%032x" % i, "n": i, "text": "é☕ \"q\" \\ " * (i % 300),
                        "nested": {"list": list(range(i % 7))}}


def backup(stub, tmp_path, name, *options):
    result = run_port(["-b", "-q", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", name] + list(options),
                      tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return (tmp_path / (name + (".gz" if "-z" in options else ""))).read_bytes()


@pytest.mark.parametrize("options", [[], ["-z"], ["-t", "2"], ["-z", "-t", "2"]])
def test_backup_is_the_same_bytes_whatever_the_http_chunking(tmp_path, options):
    files = {}
    for name, chunking in [("couchdb", couchdb_chunks), ("mib", sized_chunks(1 << 20)),
                           ("odd", sized_chunks(4093)), ("whole", None)]:
        with CouchStub(databases=["db"], chunking=chunking) as stub:
            fill(stub, 12000)
            files[name] = backup(stub, tmp_path, name + ".json", *options)
    text = gzip.decompress(files["mib"]) if "-z" in options else files["mib"]
    assert len(text) > 9 << 20 and text.count(b"\n") == 12002   # past BlockCalls.PARALLEL_FROM: -t 2 forks
    assert files["couchdb"] == files["mib"] == files["odd"] == files["whole"]


def test_couchdb_chunks_are_cut_as_couchdb_cuts_them():
    body = b'{"total_rows":3,"offset":0,"rows":[\r\n' + b"x" * 700 + b",\r\n" + b"y" * 3000 + b",\r\n" \
        + b"z" * 10 + b"\r\n]}\n"
    chunks = couchdb_chunks(body)
    assert b"".join(chunks) == body
    assert [len(c) for c in chunks] == [37 + 703, 3003, 12 + 3]


# -- ChunkedBody: the chunked framing undone in blocks, exactly -------------

class _Socket:
    """What ChunkedBody reads: the raw bytes, handed out in the given sizes."""

    def __init__(self, data, sizes):
        self.data, self.sizes, self.position = data, list(sizes), 0

    def read1(self, n):
        size = min(n, self.sizes.pop(0) if self.sizes else n)
        piece = self.data[self.position:self.position + size]
        self.position += len(piece)
        return piece

    def readline(self, limit):
        end = self.data.find(b"\n", self.position)
        end = len(self.data) if end < 0 else min(end + 1, self.position + limit)
        piece = self.data[self.position:end]
        self.position = end
        return piece


class _Response:
    chunk_left = None
    closed = False

    def _close_conn(self):
        self.closed = True


def frame(chunks, trailer=b""):
    return b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n" + trailer + b"\r\n"


def unframe(raw, reads, block):
    response = _Response()
    body = couchdb_dump.ChunkedBody(_Socket(raw, reads), response)
    blocks = list(body.blocks(block))
    assert response.closed and response.chunk_left == 0
    return blocks


# Data that looks like chunk framing: a split at it would cut a chunk short.
_TRICKY = st.sampled_from([b"\r\n", b"\r\n5\r\n", b"\r\n0\r\n\r\n", b"a\r\n", b"\r\nff;x=1\r\n", b"{", b"0"])


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.one_of(st.binary(max_size=300), _TRICKY), max_size=60).map(b"".join),
       cuts=st.lists(st.integers(0, 4000), max_size=30), reads=st.lists(st.integers(1, 700), max_size=80),
       block=st.integers(1, 900), trailer=st.sampled_from([b"", b"X-Check: 1\r\n"]))
def test_chunked_body_gives_the_data_in_blocks_of_one_size_whatever_the_chunks(data, cuts, reads, block, trailer):
    edges = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    chunks = [data[a:b] for a, b in zip(edges, edges[1:])]
    blocks = unframe(frame(chunks, trailer), reads, block)
    assert b"".join(blocks) == data
    assert all(len(b) == block for b in blocks[:-1]) and (not blocks or 0 < len(blocks[-1]) <= block)


def test_chunked_body_takes_chunk_extensions_and_upper_case_sizes():
    raw = b"5;name=value\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n"
    assert b"".join(unframe(raw, [7, 7, 7, 7, 7, 7, 7, 7], 4)) == b"hello0123456789"


@pytest.mark.parametrize("raw", [
    b"5\r\nhello\r\n3\r\nab",                  # cut inside a chunk
    b"5\r\nhello\r\n",                         # no last chunk
    b"5\r\nhelloXX\r\n0\r\n\r\n",              # a chunk longer than its size line
    b"zz\r\nhello\r\n0\r\n\r\n",               # a size that is no number
])
def test_chunked_body_refuses_a_broken_body(raw):
    import urllib3
    with pytest.raises(urllib3.exceptions.ProtocolError):
        unframe(raw, [3] * 20, 4)


# -- long lines: a document with a large attachment ---------------------------

def big_document(megabytes=25):
    """A document with an attachment of ``megabytes`` MB: a ~1.33x longer line in base64."""
    import base64
    import os as _os
    data = base64.b64encode(_os.urandom(megabytes << 20)).decode("ascii")
    return {"_id": "big", "_rev": "1-%032x" % 7, "name": "Zoë",
            "_attachments": {"file.bin": {"content_type": "application/octet-stream", "revpos": 1,
                                          "digest": "md5-x", "data": data}}}


def dump_line(doc):
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@pytest.mark.parametrize("options", [[], ["-z", "-t", "2"]])
def test_a_33_mb_line_backs_up_and_restores_with_the_same_bytes(tmp_path, options):
    big = big_document()
    small = [{"_id": "a%d" % i, "_rev": "1-%032x" % i, "n": i} for i in range(3)] + \
        [{"_id": "z", "_rev": "1-%032x" % 9, "n": 9}]
    with CouchStub(databases=["db"], chunking=couchdb_chunks) as stub:
        for doc in small + [big]:
            stub.store.databases["db"][doc["_id"]] = doc
        data = backup(stub, tmp_path, "dump.json", *options)
    text = gzip.decompress(data) if "-z" in options else data
    lines = [dump_line(doc) for doc in sorted(small + [big], key=lambda d: d["_id"])]
    assert len(lines[3]) > 33 << 20
    assert text == HEADER + b"\n" + b",\n".join(lines) + b"\n" + FOOTER + b"\n"
    (tmp_path / "plain.json").write_bytes(text)
    with CouchStub(databases=["db"]) as stub:
        result = run_port(["-r", "-q", "-H", "127.0.0.1", "-P", str(stub.port), "-d", "db", "-f", "plain.json",
                           "-l", "2"], tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        bodies = [r.body for r in stub.requests if r.path.endswith("/_bulk_docs")]
        assert stub.store.databases["db"]["big"] == big
    # -l 2 as split cuts the 7 lines: header and a0, a1 and a2, big and z, the footer.
    assert bodies[2] == HEADER + b"\n" + lines[3] + b",\n" + lines[4] + b"\n" + FOOTER + b"\n"


def layout_output(blocks, long_limit, compress=False, total_rows=0):
    layout = couchdb_dump.CouchDBLayout(total_rows, count_designs=True, compress=compress)
    layout.LONG = long_limit
    pieces = []
    for block in blocks:
        pieces += layout.feed(block)
    try:
        pieces += layout.finish()
        error = None
    except couchdb_dump.BackupFailed as failure:
        error = str(failure)
    data = b"".join(pieces)
    return (gzip.decompress(data) if compress and data else data), layout.rows, layout.designs, \
        layout.carriage_returns, error


_ROW_TEXT = st.text(alphabet=st.sampled_from('ab"\\{}é,:'), max_size=40)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from(["doc", "_design/d", "x\\\"y"]), _ROW_TEXT,
                               st.integers(0, 3)), max_size=8),
       crlf=st.booleans(), footer=st.booleans(), cuts=st.lists(st.integers(1, 60), max_size=40),
       limit=st.integers(0, 50))
def test_a_long_row_streamed_through_gives_the_bytes_of_the_whole_row(rows, crlf, footer, cuts, limit):
    end = b"\r\n" if crlf else b"\n"
    lines = [b'{"total_rows":%d,"offset":0,"rows":[' % len(rows)]
    for doc_id, text, repeat in rows:
        body = json.dumps({"_id": doc_id, "t": text * (repeat * 5)}, ensure_ascii=False).encode()
        lines.append(b'{"id":"%s","key":"%s","value":{"rev":"1-a"},"doc":%s}'
                     % (doc_id.encode(), doc_id.encode(), body))
    reply = (b"," + end).join(lines[1:])
    reply = lines[0] + end + reply + (end + b"]}\n" if footer else b"")
    reply = reply[len(lines[0]) + len(end):]   # the header line is read before the layout
    blocks, position = [], 0
    for cut in cuts:
        blocks.append(reply[position:position + cut])
        position += cut
    blocks.append(reply[position:])
    whole = layout_output(blocks, 1 << 30, total_rows=len(rows))
    streamed = layout_output(blocks, limit, total_rows=len(rows))
    assert streamed[4] == whole[4]
    assert (whole[4] is None) == footer
    if footer:     # a reply cut short fails either way; its bytes are thrown away
        assert streamed == whole
        assert layout_output(blocks, limit, compress=True, total_rows=len(rows)) == whole


def test_a_chunk_streams_the_bytes_of_its_body_and_halves_into_whole_bodies():
    lines = [b'{"_id":"%d","x":"%s"},' % (i, b"y" * (i * 300)) for i in range(12)]
    chunk = couchdb_dump.Chunk.of_lines([HEADER] + lines, HEADER, FOOTER, True)
    whole = HEADER + b"\n" + b"\n".join(lines)[:-1] + b"\n" + FOOTER + b"\n"
    for group in (1, 500, 1 << 20):
        chunk.GROUP = group
        assert chunk.size == len(whole) and b"".join(chunk.stream[1]()) == whole == chunk.body
    first, second = chunk.halves()
    assert (first.documents, second.documents) == (6, 6)
    docs = [doc for half in (first, second) for doc in json.loads(half.body)["docs"]]
    assert docs == [json.loads(line[:-1]) for line in lines]
