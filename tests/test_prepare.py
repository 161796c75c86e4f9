"""prepare.py: the splits and vocabulary, the refusals, and the download against a real local server."""
import hashlib
import http.server
import json
import os
import threading
import time

import numpy as np
import pytest

from tokenizer import CharTokenizer
from conftest import CORPUS, SHAKESPEARE, one_line_error, run


def test_encode_round_trip_with_non_ascii():
    tok = CharTokenizer.train(CORPUS)
    ids = tok.encode(CORPUS)
    assert tok.chars == sorted(set(CORPUS)) and max(ids) < tok.vocab_size
    assert ''.join(tok.chars[i] for i in ids) == tok.decode(ids) == CORPUS


def test_outputs(proj):
    folder = proj / 'data' / 'shakespeare_char'
    meta = json.loads((folder / 'meta.json').read_text())
    train = np.fromfile(folder / 'train.bin', dtype=np.uint16)
    val = np.fromfile(folder / 'val.bin', dtype=np.uint16)
    assert meta['tokenizer']['type'] == 'char' and meta['format'] == 'text'
    assert meta['vocab_size'] == len(meta['tokenizer']['chars']) == len(set(CORPUS))
    assert meta['val_bytes'] == len(CORPUS[len(train):].encode('utf-8'))
    assert len(train) == int(0.9 * len(CORPUS)) and len(train) + len(val) == len(CORPUS)
    assert ''.join(meta['tokenizer']['chars'][i] for i in np.concatenate([train, val])) == CORPUS
    assert not list(folder.glob('*.pkl')) and not list(folder.glob('*.tmp'))


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
def test_tiny_shakespeare_sizes(proj):
    r = run(proj, 'prepare.py', f'--input={SHAKESPEARE}', '--dataset=ts')
    assert r.returncode == 0, r.stderr
    assert 'train has 1,003,854 tokens, val has 111,540 tokens' in r.stdout
    assert 'vocab size: 65' in r.stdout


def test_refusals(proj, tmp_path):
    empty, binary, latin1 = tmp_path / 'empty.txt', tmp_path / 'bin.dat', tmp_path / 'latin1.txt'
    empty.write_bytes(b'')
    binary.write_bytes(bytes(range(256)) * 4)
    latin1.write_bytes('café crème'.encode('latin-1'))
    huge = tmp_path / 'huge.txt'
    huge.write_text(''.join(chr(c) for c in range(0x4E00, 0x4E00 + 70000) if not 0xD800 <= c < 0xE000),
                    encoding='utf-8')
    before = {f.name: f.read_bytes() for f in (proj / 'data' / 'shakespeare_char').iterdir()}
    for path, message in ((tmp_path / 'nope.txt', 'not found'), (empty, 'is empty'),
                          (binary, 'looks binary'), (latin1, 'not valid UTF-8'),
                          (huge, 'uint16 ids hold at most 65536')):
        msg = one_line_error(run(proj, 'prepare.py', f'--input={path}'))
        assert message in msg
    assert message in one_line_error(run(proj, 'prepare.py', f'--input={huge}', '--dataset=x'))
    assert 'plain folder name' in one_line_error(run(proj, 'prepare.py', '--dataset=../up'))
    after = {f.name: f.read_bytes() for f in (proj / 'data' / 'shakespeare_char').iterdir()}
    assert after == before  # a refused input leaves the prepared data alone


class Handler(http.server.BaseHTTPRequestHandler):
    files = {}

    def do_GET(self):
        if self.path == '/slow':
            time.sleep(3)  # longer than the client's timeout
        body = self.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (the /slow case)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}'
    httpd.shutdown()
    httpd.server_close()


def test_download_good_file(proj, server):
    body = CORPUS.encode('utf-8')
    Handler.files = {'/good': body, '/slow': body}
    args = [f'--url={server}/good', f'--sha256={hashlib.sha256(body).hexdigest()}', '--dataset=dl']
    r = run(proj, 'prepare.py', *args)
    assert r.returncode == 0, r.stderr
    assert (proj / 'data' / 'dl' / 'input.txt').read_bytes() == body
    Handler.files = {}  # a second run finds the good copy and does not ask the server
    r = run(proj, 'prepare.py', *args)
    assert r.returncode == 0 and 'already there' in r.stdout, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
def test_download_tiny_shakespeare_with_default_checksum(proj, server):
    with open(SHAKESPEARE, 'rb') as f:
        Handler.files = {'/input.txt': f.read()}
    r = run(proj, 'prepare.py', f'--url={server}/input.txt')
    assert r.returncode == 0, r.stderr
    assert 'length of dataset in characters: 1,115,394' in r.stdout


@pytest.mark.parametrize('path, message', [
    ('/bad', 'wrong sha256'), ('/missing', 'HTTPError'), ('/slow', 'Timeout')])
def test_download_failures(proj, server, path, message):
    Handler.files = {'/bad': b'<html>not the data</html>', '/slow': b'late'}
    target = proj / 'data' / 'shakespeare_char' / 'input.txt'
    target.write_bytes(b'an old copy the user had')
    msg = one_line_error(run(proj, 'prepare.py', f'--url={server}{path}', '--timeout=1'))
    assert message in msg and '--input=' in msg  # tells the user how to go offline
    assert target.read_bytes() == b'an old copy the user had'  # never replaced by a bad download
