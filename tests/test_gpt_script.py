"""gpt.py run as a user runs it: training, exact resume, sampling only, and every refusal."""
import os
import pickle
import re
import shutil
import subprocess
import sys
import types

import pytest
import torch

from conftest import REPO, SHAKESPEARE, TINY, final, one_line_error, run, run_process, val_lines


def test_train_log_and_sample(trained):
    proj, r = trained
    assert [l.split(':')[0] for l in val_lines(r.stdout)] == ['step 0', 'step 10', 'step 20']
    assert re.search(r'^iter 5: loss [\d.]+, lr [\d.e+-]+, [\d.]+ ms/iter, [\d,]+ tok/s, eta \d+s$', r.stdout, re.M)
    assert re.search(r'^whole-split val loss \d\.\d{4} \(', r.stdout, re.M)
    assert '\nFirst' in r.stdout  # the sample starts with the prompt
    rows = (proj / 'out' / 'log.csv').read_text().splitlines()
    assert rows[0] == 'kind,iter,tokens,time_s,lr,train_loss,val_loss,val_bpb,step_ms,grad_norm,clipped,update_ratio'
    for row in [row.split(',') for row in rows if row.startswith('train,')]:
        step_ms, grad_norm, clipped, update_ratio = map(float, row[-4:])
        # ms a step; the interval's mean gradient norm, and the share of its steps clipped (at 1.0, the default);
        # the logged step's update, a small share of the weights
        assert step_ms > 0 and grad_norm > 0 and clipped in (0, 0.2, 0.4, 0.6, 0.8, 1) and 0 < update_ratio < 0.1
    assert sum(row.startswith('eval,') for row in rows) == 3 and sum(row.startswith('train,') for row in rows) == 4
    ckpt = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 20 and ckpt['model_args']['n_layer'] == 2 and ckpt['config']['dropout'] == 0.1
    assert set(ckpt) >= {'model', 'optimizer', 'best_val_loss', 'tokenizer', 'rng'} and ckpt['tokenizer']['type'] == 'char'
    assert rows[-1].startswith('final,20,') and re.search(r'whole-split val loss [\d.]+ \(\d+ predictions\), val bpb [\d.]+$', r.stdout, re.M)


@pytest.mark.parametrize('grad_clip, clipped', [(1e-9, 1.0), (0, 0.0)])
def test_log_says_how_often_the_gradient_was_clipped(proj, grad_clip, clipped):
    """Every step clipped at a tiny limit, none without one; the norm is measured before clipping either way."""
    r = run(proj, 'gpt.py', *TINY, '--max_iters=10', f'--grad_clip={grad_clip}', '--max_new_tokens=0')
    assert r.returncode == 0, r.stderr
    rows = [row.split(',') for row in (proj / 'out' / 'log.csv').read_text().splitlines() if row.startswith('train,')]
    assert len(rows) == 2 and all(float(row[-2]) == clipped and float(row[-3]) > 0.01 for row in rows)


def test_resume_is_exact(trained):
    proj, _ = trained
    args = [*TINY, '--max_iters=40', '--lr_decay_iters=40', '--dropout=0.1']
    resumed = run(proj, 'gpt.py', *args, '--init_from=resume')
    straight = run(proj, 'gpt.py', *args, '--out_dir=straight')
    assert resumed.returncode == 0 and straight.returncode == 0, resumed.stderr + straight.stderr
    assert 'resumed from' in resumed.stdout and 'step 20:' not in resumed.stdout
    assert val_lines(resumed.stdout)[-1].startswith('step 40:')
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]


def test_sample_only(trained):
    proj, _ = trained
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    r = run(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', '--prompt=All:', '--num_samples=2',
            '--temperature=0', '--max_new_tokens=20')
    assert r.returncode == 0, r.stderr
    assert not val_lines(r.stdout) and 'whole-split' not in r.stdout
    *_, first, second, end = r.stdout.split('---------------\n')
    assert end == '' and second.startswith('All:') and first.endswith('\n' + second)  # greedy: twice the same
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before


def test_num_samples_are_one_batch_printed_whole_and_cut_at_stop(trained):
    """Several samples are drawn together and printed when done: greedy, each is the one sample drawn
    alone; with temperature, the same seed gives the same samples; each is cut at its stop."""
    proj, _ = trained
    args = ('--init_from=resume', '--max_iters=0', '--prompt=All:', '--max_new_tokens=40')
    one = run(proj, 'gpt.py', *args, '--temperature=0', '--num_samples=1')
    three = run(proj, 'gpt.py', *args, '--temperature=0', '--num_samples=3')
    assert len(samples(one)) == 1 and samples(three) == samples(one) * 3
    assert '(120 tokens in' in three.stderr
    drawn = [samples(run(proj, 'gpt.py', *args, '--num_samples=3', '--seed=5')) for _ in range(2)]
    assert drawn[0] == drawn[1] and len(set(drawn[0])) == 3
    cut = samples(run(proj, 'gpt.py', *args, '--num_samples=3', '--stop=e', '--seed=5'))
    assert len(cut) == 3 and all(s.startswith('All:') and 'e' not in s for s in cut), cut


def samples(r):
    """The samples a run printed: what follows the device line, between the separators."""
    assert r.returncode == 0, r.stderr
    return r.stdout.split('\ndevice: ', 1)[1].split('\n', 1)[1].split('\n---------------\n')[:-1]


class Evil:
    def __reduce__(self):
        return (os.system, ('touch pwned',))


@pytest.mark.parametrize('args, message', [
    (['--init_from=resume', '--out_dir=empty'], 'no checkpoint'),
    (['--init_from=nothing_here'], "init_from must be 'scratch', 'resume', a checkpoint's path, gpt2"),
    (['--n_head=3'], 'must be a multiple of n_head'),
    (['--block_size=100000'], 'must be shorter than both splits'),
    (['--n_layer=0'], 'must be positive'),
    (['--batch_size=-1'], 'must be positive'),
    (['--max_iters=-5'], 'must not be negative'),
    (['--dropout=1.5'], 'dropout must be in'),
    (['--learning_rate=0'], 'learning_rate'),
    (['--temperature=-1'], 'temperature must be >= 0'),
    (['--top_k=-2'], 'top_k must be >= 0'),
    (['--top_p=0'], 'top_p must be in'),
    (['--top_p=1.5'], 'top_p must be in'),
    (['--prompt=Zeal~'], "not in the vocabulary: ['Z', '~']"),
    (['--prompt='], 'prompt must not be empty'),
    (['--dtype=float8'], 'dtype must be'),
    (['--compile=maybe'], 'compile must be'),
    (['--init_from=resume', '--eval_only=true', '--interactive=true'], 'choose one'),
    (['--device=cuda'], 'CUDA is not available'),
    (['--device=tpu'], 'unknown --device'),
    (['--dataset=nothing'], 'run: python prepare.py'),
    (['--n_embd=abc'], 'not a valid int'),
])
def test_bad_input_is_refused(trained, args, message):
    proj, _ = trained
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    assert message in one_line_error(run(proj, 'gpt.py', *TINY, '--max_iters=30', *args))
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before  # nothing is overwritten


def test_bad_checkpoints_are_refused(trained, tmp_path):
    proj, _ = trained
    good = (proj / 'out' / 'ckpt.pt').read_bytes()
    bigram_ckpt = proj / 'b.pt'
    torch.save({'model_type': 'bigram', 'chars': []}, bigram_ckpt)
    cases = [(good[:len(good) // 2], 'not a loadable checkpoint'),  # truncated
             (os.urandom(4096), 'not a loadable checkpoint'),  # random bytes
             (pickle.dumps(Evil()), 'not a loadable checkpoint'),  # pickled code
             (bigram_ckpt.read_bytes(), 'not a gpt checkpoint')]
    for i, (content, message) in enumerate(cases):
        folder = proj / f'bad{i}'
        folder.mkdir()
        (folder / 'ckpt.pt').write_bytes(content)
        assert message in one_line_error(run(proj, 'gpt.py', '--init_from=resume', f'--out_dir=bad{i}'))
        assert (folder / 'ckpt.pt').read_bytes() == content
    assert not (proj / 'pwned').exists()  # the pickled code never ran


def test_vocabulary_mismatch_is_refused(trained, tmp_path):
    proj, _ = trained
    (tmp_path / 'other.txt').write_text('abcdefghij\n' * 200)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "other.txt"}').returncode == 0
    before = (proj / 'out' / 'ckpt.pt').read_bytes()
    assert 'another vocabulary' in one_line_error(run(proj, 'gpt.py', *TINY, '--init_from=resume', '--max_iters=30'))
    assert (proj / 'out' / 'ckpt.pt').read_bytes() == before


@pytest.mark.parametrize('dtype', ['bfloat16', 'float16'])
def test_mixed_precision_paths_run_on_cpu(proj, dtype):
    # the GPU's autocast and (for float16) GradScaler code, exercised on the CPU
    r = run(proj, 'gpt.py', *TINY, '--max_iters=10', f'--dtype={dtype}', '--optimizer=muon')
    assert r.returncode == 0, r.stderr
    assert f'dtype: {dtype} (as asked)' in r.stdout
    assert final(proj / 'out')['val_loss'] < 4.5


def test_cpu_name_says_the_model_and_the_flags_that_choose_roads(tmp_path):
    import machine
    cpuinfo = tmp_path / 'cpuinfo'
    cpuinfo.write_text('processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n')
    assert machine.cpu_name(str(cpuinfo)) == 'AMD EPYC 9R14 (avx2 avx512f avx512_bf16)'
    assert machine.cpu_name(str(tmp_path / 'none')) == 'a CPU (no AVX2)'


@pytest.mark.parametrize('max_iters, expected', [(100, 5 + 2 * 2), (110, 6 + 3 * 2)])
def test_eta_counts_the_steps_and_the_evals_left(monkeypatch, capsys, max_iters, expected):
    """At step 50 of max_iters, 0.1 s a step, every 25 steps an eval of 2 s: the steps left, plus the evals
    still due (at 75 and 100; and at the last step when max_iters is no multiple of 25)."""
    import gpt
    from configurator import knobs
    k = types.SimpleNamespace(**{**knobs(vars(gpt)), 'max_iters': max_iters, 'eval_interval': 25, 'max_time': 0.0})
    import logbook
    monkeypatch.setattr(logbook, 'write_csv', lambda *args, **kwargs: None)  # nothing written
    state = gpt.State({}, {}, {}, {}, 'ckpt.pt', torch.Generator(), iter_num=50, tokens_per_iter=100,
                      eval_s=2.0)
    logbook.log_progress(types.SimpleNamespace(dev_type='cpu'), state, 1.0, 0.1, k)
    assert capsys.readouterr().out.rstrip().endswith(f'eta {expected}s')


def test_modern_switches_train_and_resume(proj):
    modern = ['--optimizer=muon', '--schedule=wsd', '--rope=true', '--rmsnorm=true', '--qk_norm=true',
              '--relu2=true', '--tie_weights=false', '--lr_decay_iters=40', '--dropout=0.1']
    first = run(proj, 'gpt.py', *TINY, *modern, '--max_iters=20')
    resumed = run(proj, 'gpt.py', *TINY, *modern, '--max_iters=40', '--init_from=resume')
    straight = run(proj, 'gpt.py', *TINY, *modern, '--max_iters=40', '--out_dir=straight')
    assert all(r.returncode == 0 for r in (first, resumed, straight)), first.stderr + resumed.stderr
    assert val_lines(resumed.stdout)[-1] == val_lines(straight.stdout)[-1]
    assert 'trained with optimizer' in one_line_error(
        run(proj, 'gpt.py', *TINY, '--optimizer=adamw', '--max_iters=50', '--init_from=resume'))


def test_classic_config_file(proj):
    shutil.copytree(os.path.join(REPO, 'config'), proj / 'config')
    r = run(proj, 'gpt.py', 'config/classic.py', *TINY, '--max_iters=10')
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)
    assert not ckpt['model_args']['rope'] and 'wpe.weight' in ckpt['model'] and len(ckpt['optimizer']) == 1
    configs = sorted(str(p.relative_to(proj)) for p in (proj / 'config').rglob('*.py'))
    assert len(configs) >= 12 and 'config/lecture/layernorm.py' in configs
    for cfg in configs:  # every shipped config file names only real knobs
        r = run(proj, 'gpt.py', cfg, '--max_iters=0', '--device=cpu', '--dataset=nothing')
        assert 'run: python prepare.py' in one_line_error(r), cfg


@pytest.mark.slow
def test_compile_path_on_cpu(proj):
    # CUDA's default (compile=auto) exercised on the CPU: it trains, and the checkpoint holds the
    # uncompiled module's keys, so it loads without torch.compile. A process of its own: torch.compile
    # builds C++ and leaves its state behind
    r = run_process(proj, 'gpt.py', *TINY, '--max_iters=10', '--compile=true')
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)
    assert not any(k.startswith('_orig_mod') for k in ckpt['model'])
    assert run_process(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', '--max_new_tokens=5').returncode == 0


@pytest.mark.parametrize('script, args, message', [
    ('gpt.py', ['--n_embd=abc'], 'not a valid int'),  # the configurator
    ('gpt.py', ['--dataset=nothing'], 'run: python prepare.py'),  # data
    ('gpt.py', ['--n_head=3'], 'must be a multiple of n_head'),  # checks.py
    ('gpt.py', ['--init_from=resume', '--out_dir=bad'], 'not a loadable checkpoint'),  # a damaged file
    ('bigram.py', ['--prompt=Zebra!'], 'not in the vocabulary'),
    ('prepare.py', ['--input=nope.txt'], 'not found'),
    ('plot.py', ['nope/log.csv'], 'not found'),
    ('gpt.py', [b'--prompt=caf\xe9'], 'is a byte that is not UTF-8'),  # bytes that are not UTF-8 in argv
])
def test_refusals_are_one_line_in_a_real_process(trained, script, args, message):
    # the in-process runner sees SystemExit; a real process must also print no traceback around it
    proj, _ = trained
    (proj / 'bad').mkdir()
    (proj / 'bad' / 'ckpt.pt').write_bytes(b'not a checkpoint')
    assert message in one_line_error(run_process(proj, script, *TINY * (script == 'gpt.py'), *args))


def test_resumed_run_keeps_its_time_budget(trained):
    # the training time so far is in the checkpoint: a resumed run spends what is left of max_time, and
    # log.csv's clock goes on from there
    proj, _ = trained
    spent = torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['train_time']
    assert spent > 0
    args = [*TINY, '--lr_decay_iters=40', '--dropout=0.1', '--init_from=resume']
    r = run(proj, 'gpt.py', *args, '--max_iters=1000', f'--max_time={spent / 2}')
    assert r.returncode == 0, r.stderr
    assert not val_lines(r.stdout) and 'trained' not in r.stdout  # the budget was spent before the resume
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['iter_num'] == 20
    assert run(proj, 'gpt.py', *args, '--max_iters=40').returncode == 0
    times = [float(row.split(',')[3]) for row in (proj / 'out' / 'log.csv').read_text().splitlines()[1:]]
    assert times == sorted(times) and times[-1] > spent
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['train_time'] == pytest.approx(times[-1], abs=1e-3)


def test_block_size_1_trains_and_samples(proj):
    r = run(proj, 'gpt.py', '--n_layer=1', '--n_head=1', '--n_embd=16', '--block_size=1', '--max_iters=10',
            '--eval_interval=10', '--eval_iters=2', '--max_new_tokens=5', '--compile=false')
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith('---------------\n') and len(val_lines(r.stdout)) == 2


LECTURE_STEPS = ['head', 'heads', 'ffn', 'residual', 'layernorm', 'no_residual', 'no_pos']


def test_lecture_step_configs_train_and_resume(proj):
    # each step's parts, on the tiny corpus: it trains, and its checkpoint resumes and samples
    shutil.copytree(os.path.join(REPO, 'config'), proj / 'config')
    short = ['--max_iters=20', '--eval_interval=10', '--eval_iters=2', '--log_interval=10', '--max_new_tokens=10']
    for step in LECTURE_STEPS:
        r = run(proj, 'gpt.py', f'config/lecture/{step}.py', *short)
        assert r.returncode == 0, (step, r.stderr)
        ckpt = torch.load(proj / f"out-lecture-{step.replace('_', '-')}" / 'ckpt.pt', weights_only=True)
        args = ckpt['model_args']
        assert (args['n_embd'], args['block_size'], args['bias'], args['relu'], args['weight_init']) == \
            (32, 8, True, True, 'pytorch')
        assert args['ffn'] == (step not in ('head', 'heads')) and args['pos'] == (step != 'no_pos')
    r = run(proj, 'gpt.py', 'config/lecture/heads.py', '--init_from=resume', '--max_iters=0', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SHAKESPEARE), reason='no shared Tiny Shakespeare copy')
@pytest.mark.parametrize('step, lecture', [('head', 2.40), ('layernorm', 2.06)])
def test_lecture_steps_reach_the_lectures_val_loss(proj, step, lecture):
    # the example is its own test: the first and the last step, on the real data, within 0.05 of the lecture
    shutil.copytree(os.path.join(REPO, 'config'), proj / 'config')
    assert run(proj, 'prepare.py', f'--input={SHAKESPEARE}').returncode == 0
    r = run(proj, 'gpt.py', f'config/lecture/{step}.py', '--max_new_tokens=0')
    assert r.returncode == 0, r.stderr
    assert abs(final(proj / f"out-lecture-{step}")['val_loss'] - lecture) < 0.05


def files(folder):
    """Every file under folder, with its bytes: what a command wrote, or didn't."""
    return {p: p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_sample_only_from_a_path_writes_nothing_and_export_never_overwrites(trained):
    proj, _ = trained
    (proj / 'other').mkdir()
    shutil.copy(proj / 'out' / 'ckpt.pt', proj / 'other' / 'ckpt.pt')
    before = files(proj)
    for more in ([], ['--out_dir=other'], ['--eval_only=true']):  # the default out_dir holds another run
        r = run(proj, 'gpt.py', '--init_from=other/ckpt.pt', '--max_iters=0', '--max_new_tokens=5', *more)
        assert r.returncode == 0 and 'wrote' not in r.stdout, r.stderr
        assert files(proj) == before
    msg = one_line_error(run(proj, 'gpt.py', '--init_from=other/ckpt.pt', '--max_iters=0', '--export=true'))
    assert 'never writes over a checkpoint' in msg and files(proj) == before
    for args, message in ((['--max_iters=10'], 'export writes'), (['--init_from=resume'], 'export writes')):
        assert message in one_line_error(run(proj, 'gpt.py', '--init_from=other/ckpt.pt', '--max_iters=0',
                                             '--export=true', '--out_dir=new', *args))
    r = run(proj, 'gpt.py', '--init_from=other/ckpt.pt', '--max_iters=0', '--export=true', '--out_dir=new',
            '--max_new_tokens=5')
    assert r.returncode == 0 and 'wrote ' in r.stdout, r.stderr
    exported = torch.load(proj / 'new' / 'ckpt.pt', weights_only=True)
    assert all(torch.equal(exported['model'][k], v) for k, v in torch.load(proj / 'other' / 'ckpt.pt')['model'].items())
    assert '--export' in run(proj, 'gpt.py', '--help').stdout


@pytest.mark.parametrize('knob', ['--n_layer=3', '--block_size=8', '--rope=false', '--ffn=false', '--n_embd=64'])
def test_a_loaded_model_keeps_its_architecture(trained, knob):
    """Resuming or fine-tuning with another architecture is refused in one line that names the knob."""
    proj, _ = trained
    before = files(proj)
    for init in ('resume', 'out/ckpt.pt'):
        msg = one_line_error(run(proj, 'gpt.py', f'--init_from={init}', '--max_iters=30', '--out_dir=' +
                                 ('out' if init == 'resume' else 'ft'), knob))
        assert msg.startswith(f"error: {knob.split('=')[0]}=") and 'leave' in msg
    assert files(proj) == before
    # the same values are fine, and the saved config says what was used
    r = run(proj, 'gpt.py', '--init_from=resume', '--max_iters=30', '--n_layer=2', '--max_new_tokens=0')
    assert r.returncode == 0, r.stderr
    assert torch.load(proj / 'out' / 'ckpt.pt', weights_only=True)['config']['n_embd'] == 32  # not the default 128


@pytest.mark.parametrize('args, message', [
    (['--relu=true', '--relu2=true'], 'relu and relu2 are two choices of one activation'),
    (['--export=true'], 'export writes'),
])
def test_conflicting_knobs_are_refused(proj, args, message):
    assert message in one_line_error(run(proj, 'gpt.py', *TINY, *args))


def test_no_positions_needs_no_even_head_size(proj):
    r = run(proj, 'gpt.py', *TINY, '--pos=false', '--n_embd=30', '--n_head=2', '--max_iters=5', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize('script', ['gpt.py', 'bigram.py'])
def test_a_tiny_temperature_is_greedy(trained, script):
    proj, _ = trained
    if script == 'bigram.py':
        assert run(proj, 'bigram.py', '--max_iters=20', '--eval_interval=10', '--eval_iters=2').returncode == 0
    sample = lambda t: run(proj, script, '--init_from=resume', '--max_iters=0', '--max_new_tokens=30',
                           f'--temperature={t}', '--prompt=All', *(['--dtype=float32'] if script == 'gpt.py' else []))
    tiny, greedy = sample(1e-40), sample(0)  # (in float32: bf16 logits tie, and ties are drawn at random)
    assert tiny.returncode == 0, tiny.stderr
    assert tiny.stdout.split('All', 1)[1] == greedy.stdout.split('All', 1)[1]


def test_attention_title_names_what_was_drawn():
    import plot
    title = plot.attention_title('First Citizen', ['C', 'i', 't', 'i', 'z', 'e', 'n'], 3.8)  # n_head=1's width
    assert "the last 7 tokens of the prompt, 'Citizen'" in title.replace('\n', ' ')
    assert max(len(line) for line in title.splitlines()) <= 3.8 * 13
    assert "attention over 'Citizen':" in plot.attention_title('Citizen', list('Citizen'), 20)


LECTURE_PARTS = dict(rope=False, rmsnorm=False, qk_norm=False, relu2=False, relu=True, bias=True, tie_weights=False,
                     weight_init='pytorch', optimizer='adamw', ffn=True, residual=True, norm=True, pos=True)
GPT2_PARTS = dict(rope=False, rmsnorm=False, qk_norm=False, relu2=False, relu=False, bias=False, tie_weights=True,
                  weight_init='nanogpt', optimizer='adamw')


@pytest.mark.parametrize('config, parts', [
    ('config/lecture_gpu.py', LECTURE_PARTS), ('config/lecture_cpu.py', LECTURE_PARTS),
    ('config/lecture/layernorm.py', LECTURE_PARTS), ('config/classic.py', GPT2_PARTS)])
def test_configs_use_the_parts_they_name(config, parts, capsys):
    """One definition of the lecture's parts (config/lecture/parts.py), used by every config that names them."""
    import gpt
    from configurator import configure
    scope = dict(vars(gpt))
    cwd = os.getcwd()
    os.chdir(REPO)  # config files import config.lecture.* from the project's folder
    try:
        configure(scope, [config])
    finally:
        os.chdir(cwd)
    assert {k: scope[k] for k in parts} == parts
    assert scope['decay_lr'] is (parts is GPT2_PARTS)  # the lecture's constant rate, whatever learning_rate is
    if config == 'config/lecture_gpu.py':  # the lecture's scaled-up model
        assert (scope['n_layer'], scope['n_head'], scope['n_embd'], scope['block_size'], scope['dropout']) == \
            (6, 6, 384, 256, 0.2)


def test_the_best_model_is_kept_beside_the_latest(proj, tmp_path):
    # train on "abab..." and score on "aabb...": the more it learns, the worse its val loss, so the best
    # step is an early one, while ckpt.pt must still hold the last step for an exact resume
    (tmp_path / 'ab.txt').write_text('ab' * 900 + 'aabb' * 50)
    assert run(proj, 'prepare.py', f'--input={tmp_path / "ab.txt"}', '--dataset=ab').returncode == 0
    r = run(proj, 'gpt.py', *TINY, '--dataset=ab', '--max_iters=30', '--eval_interval=5', '--max_new_tokens=5',
            '--prompt=a')
    assert r.returncode == 0, r.stderr
    evals = [row.split(',') for row in (proj / 'out' / 'log.csv').read_text().splitlines() if row.startswith('eval,')]
    val = {int(row[1]): float(row[6]) for row in evals if row[1] != '0'}
    best_step = min(val, key=val.get)
    assert best_step < 30 and val[30] > val[best_step]
    best, latest = (torch.load(proj / 'out' / f, weights_only=True) for f in ('best.pt', 'ckpt.pt'))
    assert best['iter_num'] == latest['best_iter'] == best_step and latest['iter_num'] == 30 and not best['optimizer']
    assert f"the model below: step {best_step}," in r.stdout and 'keeps step 30 to resume' in r.stdout
    again = run(proj, 'gpt.py', '--dataset=ab', '--init_from=out/best.pt', '--eval_only=true', '--prompt=a')
    whole = re.compile(r'^whole-split val loss .*$', re.M)
    assert whole.search(again.stdout).group() == whole.search(r.stdout).group()  # the final line is best.pt's
    resumed = run(proj, 'gpt.py', *TINY, '--dataset=ab', '--max_iters=35', '--eval_interval=5', '--init_from=resume',
                  '--prompt=a')
    assert resumed.returncode == 0 and 'resumed from' in resumed.stdout and f"step {best_step}," in resumed.stdout


def test_samples_stream_as_they_are_made(trained):
    proj, _ = trained
    p = subprocess.Popen([sys.executable, 'gpt.py', '--init_from=resume', '--max_iters=0', '--prompt=First',
                          '--max_new_tokens=1000000'], cwd=proj, stdout=subprocess.PIPE, text=True)
    try:
        seen = ''
        while 'First' not in seen or len(seen.split('First', 1)[1]) < 50:  # 50 characters of the sample ...
            seen += p.stdout.read(1)
        assert p.poll() is None  # ... while it is still being made
    finally:
        p.kill()
        p.wait()


def test_interactive_answers_each_line_with_one_model(trained):
    proj, _ = trained
    r = subprocess.run([sys.executable, 'gpt.py', '--init_from=resume', '--max_iters=0', '--interactive=true',
                        '--max_new_tokens=20', '--temperature=0'], cwd=proj, capture_output=True, text=True,
                       input='First\nAll: 😀 \u2603\nAll:\n\nnever read\n', timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count('model: ') == 1 and r.stdout.count('---------------') == 2  # loaded once, two answers
    assert 'prompt> First' in r.stdout and 'prompt> All:' in r.stdout and 'never read' not in r.stdout
    assert "not in the vocabulary: ['☃']" in r.stdout  # a line it can't take is said, and the loop goes on
