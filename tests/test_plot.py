"""plot.py on a real tiny log: it writes a PNG that opens, and refuses what is not a gpt.py log."""
import struct

import pytest

from conftest import TINY, one_line_error, run

pytest.importorskip('matplotlib')


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'  # the PNG signature, then its header
    return struct.unpack('>II', data[16:24])


def test_plot_real_logs(proj):
    for out_dir, extra in (('a', []), ('b', ['--n_layer=1'])):
        assert run(proj, 'gpt.py', *TINY, '--max_iters=20', f'--out_dir={out_dir}', *extra).returncode == 0
    r = run(proj, 'plot.py', 'a/log.csv')
    assert r.returncode == 0, r.stderr
    assert png_size(proj / 'a' / 'loss.png') == (512, 320)
    for args in (['--x=time'], ['--x=iter', '--y=bpb', '--title=two runs']):
        r = run(proj, 'plot.py', 'a/log.csv', 'b/log.csv', *args, '--out=both.png')
        assert r.returncode == 0, r.stderr
        assert png_size(proj / 'both.png') == (512, 320) and 5_000 < (proj / 'both.png').stat().st_size < 200_000


def test_plot_refusals(proj):
    (proj / 'empty.csv').write_text('kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb\n')
    (proj / 'other.csv').write_text('a,b,c\n1,2,3\n')
    (proj / 'garbled.csv').write_text('kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb\neval,1,2,3,4,five,6,7\n')
    for args, message in ((['missing/log.csv'], 'not found'), (['other.csv'], 'is not a gpt.py log'),
                          (['empty.csv'], 'has no rows yet'), (['garbled.csv'], 'not a number'),
                          ([], 'give one or more logs'), (['empty.csv', '--x=epochs'], '--x must be')):
        assert message in one_line_error(run(proj, 'plot.py', *args))
