"""plot.py on a real tiny log and checkpoint: loss curves and attention maps as PNGs that open, and refusals."""
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
    assert run(proj, 'plot.py', 'a/log.csv', '--ymax=3', '--out=closer.png').returncode == 0
    assert (proj / 'closer.png').read_bytes() != (proj / 'a' / 'loss.png').read_bytes()  # the axis ends at 3


def test_plot_health_and_older_logs(proj):
    """--y=grad_norm and --y=update_ratio draw the health columns; a log from before them still plots its loss,
    and asking it for health says why not."""
    assert run(proj, 'gpt.py', *TINY, '--max_iters=20', '--out_dir=a').returncode == 0
    for y in ('grad_norm', 'update_ratio'):
        r = run(proj, 'plot.py', 'a/log.csv', f'--y={y}')
        assert r.returncode == 0, r.stderr
        assert png_size(proj / 'a' / f'{y}.png') == (512, 320)
    rows = (proj / 'a' / 'log.csv').read_text().splitlines()
    (proj / 'old').mkdir()
    (proj / 'old' / 'log.csv').write_text('\n'.join(','.join(row.split(',')[:9]) for row in rows) + '\n')
    assert run(proj, 'plot.py', 'old/log.csv').returncode == 0
    assert 'older than that column' in one_line_error(run(proj, 'plot.py', 'old/log.csv', '--y=grad_norm'))


def test_plot_refusals(proj):
    (proj / 'empty.csv').write_text('kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb\n')
    (proj / 'other.csv').write_text('a,b,c\n1,2,3\n')
    (proj / 'garbled.csv').write_text('kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb\neval,1,2,3,4,five,6,7\n')
    for args, message in ((['missing/log.csv'], 'not found'), (['other.csv'], 'is not a gpt.py log'),
                          (['empty.csv'], 'has no rows yet'), (['garbled.csv'], 'not a number'),
                          ([], 'give one or more logs'), (['empty.csv', '--x=epochs'], '--x must be'),
                          (['empty.csv', '--ymax=-1'], '--ymax must be')):
        assert message in one_line_error(run(proj, 'plot.py', *args))


def test_attention_picture(trained):
    proj, _ = trained
    r = run(proj, 'plot.py', '--attention=out/ckpt.pt', '--prompt=All: Speak')
    assert r.returncode == 0, r.stderr
    w, h = png_size(proj / 'out' / 'attention.png')  # beside the checkpoint
    assert w > 300 and h > 300  # 2 layers x 2 heads of heatmaps
    r = run(proj, 'plot.py', '--attention=out/ckpt.pt', '--prompt=First Citizen: Before we proceed', '--out=a.png')
    assert r.returncode == 0 and (proj / 'a.png').exists(), r.stderr  # longer than the block: its last 16 tokens


def test_attention_refusals(trained):
    proj, _ = trained
    (proj / 'random.pt').write_bytes(bytes(range(256)) * 8)
    for args, message in ((['--attention=nope/ckpt.pt'], 'no checkpoint at nope/ckpt.pt'),
                          (['--attention=random.pt'], 'not a loadable checkpoint'),
                          (['--attention=out/log.csv'], 'not a loadable checkpoint'),
                          (['--attention=out/ckpt.pt', '--prompt='], 'prompt must not be empty'),
                          (['--attention=out/ckpt.pt', '--prompt=Zq~'], "not in the model's vocabulary: ['Z', 'q', '~']")):
        assert message in one_line_error(run(proj, 'plot.py', *args))
    assert not (proj / 'out' / 'attention.png').exists()
