"""Nothing lost, nothing wrong (issue 33): every file a run depends on stays whole or the command is refused in one
line; settings that fight each other are refused; a sweep reports only the command it was given."""
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import gpt
import sweep
from conftest import TINY, one_line_error, run, val_lines

LECTURE = ['--rope=false', '--rmsnorm=false', '--qk_norm=false', '--relu=true', '--bias=true', '--tie_weights=false',
           '--weight_init=pytorch', '--optimizer=adamw', '--warmup_iters=0', '--decay_lr=false', '--n_layer=1',
           '--n_head=1', '--n_embd=32', '--ffn=false', '--batch_size=32', '--gradient_accumulation_steps=1',
           '--block_size=8', '--compile=false']  # config/lecture/head.py's knobs, the project's copy has no config/


def sha(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


def fingerprints(folder):
    return {name: sha(folder / name) for name in sorted(os.listdir(folder)) if name.endswith('.pt')}


# ------------------------------------------------------------------------------------------------ data loss
@pytest.mark.parametrize('source', ['out/best.pt', 'out/ckpt.pt', 'out'])
@pytest.mark.parametrize('lora', [[], ['--lora_rank=4']])
def test_a_model_inside_the_runs_own_out_dir_is_refused(trained, source, lora):
    proj, _ = trained
    before = fingerprints(proj / 'out')
    assert set(before) == {'best.pt', 'ckpt.pt'}
    r = run(proj, 'gpt.py', *TINY, f'--init_from={source}', '--max_iters=30', '--eval_interval=10', *lora)
    assert "lies in this run's --out_dir=out" in one_line_error(r)
    assert fingerprints(proj / 'out') == before


def test_a_run_folder_as_init_from_names_its_checkpoint(trained):
    proj, _ = trained
    msg = one_line_error(run(proj, 'gpt.py', *TINY, '--init_from=out', '--max_iters=0'))
    assert "out is a run's folder" in msg and '--init_from=out/ckpt.pt' in msg


def test_later_runs_in_the_base_out_dir_never_break_a_lora_run(trained):
    """The README's recipe pins out/ckpt.pt as the base; a default run, a classic run and a resume in out/ then
    rewrite it. The LoRA run still resumes, samples and exports, on the base it trained on."""
    proj, _ = trained
    lora = [*TINY, '--init_from=out/ckpt.pt', '--lora_rank=4', '--out_dir=out-lora', '--learning_rate=1e-2']
    assert run(proj, 'gpt.py', *lora, '--max_iters=10').returncode == 0
    ev = lambda: run(proj, 'gpt.py', '--init_from=resume', '--out_dir=out-lora', '--eval_only=true')
    first = re.search(r'val bpb ([\d.]+)', ev().stdout).group(1)
    base_sha = sha(proj / 'out-lora' / 'base' / 'ckpt.pt')
    classic = [*TINY, '--rope=false', '--rmsnorm=false', '--optimizer=adamw']
    for later in ([*TINY, '--max_iters=10'], [*classic, '--max_iters=10'], [*classic, '--init_from=resume', '--max_iters=30']):
        r = run(proj, 'gpt.py', *later)
        assert r.returncode == 0, r.stderr
    assert sha(proj / 'out' / 'ckpt.pt') != base_sha and sha(proj / 'out-lora' / 'base' / 'ckpt.pt') == base_sha
    assert re.search(r'val bpb ([\d.]+)', ev().stdout).group(1) == first
    resumed = run(proj, 'gpt.py', *lora[:1], *lora[2:], '--init_from=resume', '--max_iters=20')
    sampled = run(proj, 'gpt.py', '--init_from=resume', '--out_dir=out-lora', '--max_iters=0', '--max_new_tokens=5')
    exported = run(proj, 'gpt.py', '--init_from=out-lora/ckpt.pt', '--max_iters=0', '--export=true', '--out_dir=out-m')
    assert resumed.returncode == sampled.returncode == exported.returncode == 0, resumed.stderr + exported.stderr


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_sweep_keeps_the_running_runs_step_and_resumes_it(proj, sig):
    """A signal to sweep.py alone: gpt.py saves its step and exits (no orphan holds the lock), and the rerun
    resumes that run from its checkpoint instead of starting it anew."""
    args = [sys.executable, 'sweep.py', *TINY, '--max_iters=100000', '--max_time=6', '--eval_interval=50',
            '--out_dir=sw']
    p = subprocess.Popen(args, cwd=proj, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = proj / 'sw' / 'seed=1337' / 'log.csv'
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().count('\ntrain,') >= 2):
        time.sleep(0.1)
    p.send_signal(sig)
    out, err = p.communicate(timeout=60)
    assert p.returncode != 0 and 'the running gpt.py saved its step' in err, out + err
    ckpt = torch.load(proj / 'sw' / 'seed=1337' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] >= 10 and ckpt['train_time'] < 6
    other = subprocess.run([*args[:-3], '--max_time=5', '--eval_interval=50', '--out_dir=sw'], cwd=proj,
                           capture_output=True, text=True, timeout=300)
    assert other.returncode != 0 and 'holds a run of another command' in other.stderr
    again = subprocess.run(args, cwd=proj, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and 'running (resumed from its checkpoint)' in again.stdout, again.stdout + again.stderr
    rows = log.read_text().splitlines()
    assert rows[1].startswith('eval,0,') and rows[-1].startswith('final,')  # one log, from step 0 to the end


# ---------------------------------------------------------------------------------------------- wrong results
def test_a_sweep_folder_of_another_command_is_refused(proj, monkeypatch):
    monkeypatch.setattr(sweep, 'ROOT', str(proj))
    folder = proj / sweep.folder_of('sw', {'rope': 'false'}, 1337)
    folder.mkdir(parents=True)
    (folder / 'run.json').write_text(json.dumps({'args': ['config/classic.py'], 'config_sha256': {}}))
    (folder / 'result.json').write_text(json.dumps({'status': 'ok', 'val_bpb': 1.0, 'val_loss': 1.0, 'steps': 1,
                                                    'time_s': 1.0}))
    before = sorted(os.listdir(folder))
    with pytest.raises(SystemExit) as e:
        sweep.main(['--rope=false,true', '--max_iters=10', '--out_dir=sw'])
    assert 'holds a run of another command' in str(e.value) and sorted(os.listdir(folder)) == before


def test_seeds_are_the_sweeps_own_and_never_overridden():
    assert sweep.parse(['--n_layer=1,2', '--seed=1,2'])[1:4] == ({'n_layer': ['1', '2']}, [], [1, 2])
    assert sweep.parse(['--seed=7', '--seeds=3'])[3] == [7, 8, 9]
    assert sweep.parse(['--seeds=2'])[3] == [1337, 1338]
    for bad, message in ((['--seed=1,2', '--seeds=2'], 'not both'), (['--n_layer=1,1'], 'lists a value twice'),
                         (['--seed=x'], 'whole numbers')):
        with pytest.raises(SystemExit) as e:
            sweep.parse(bad)
        assert message in str(e.value)


def test_every_combination_passes_gpts_checks_before_any_run(proj, monkeypatch, capsys):
    monkeypatch.setattr(sweep, 'ROOT', str(proj))
    with pytest.raises(SystemExit) as e:
        sweep.main(['--n_embd=30,32', '--n_head=4', '--out_dir=sw'])
    assert 'n_embd (30) must be a multiple of n_head (4)' in str(e.value)
    assert not (proj / 'sw').exists() and 'running' not in capsys.readouterr().out


@pytest.mark.slow
def test_a_sweep_with_nothing_swept_draws_its_point_and_a_failed_run_exits_1(proj):
    r = run(proj, 'sweep.py', *TINY, '--max_iters=4', '--out_dir=sw')  # a real process: sweep.py is no SCRIPT
    assert r.returncode == 0 and (proj / 'sw' / 'sweep.png').stat().st_size > 1000, r.stderr
    assert re.search(r'^\| as given \| [\d.]+ \| [\d.]+ \| 4 \|', r.stdout, re.M)
    failed = run(proj, 'sweep.py', *TINY, '--max_iters=4', '--block_size=16,5000', '--out_dir=sw2')
    assert failed.returncode == 1 and '0 ok, failed: error: ' in failed.stdout


def test_without_the_causal_mask_sampling_never_uses_the_cache():
    """A model that looks ahead can't be cached: a cached position never saw the later tokens. Sampling with
    kv_cache=True gives what the uncached model gives."""
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(65, 32, 2, 2, 32, causal=False)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.5)
    prompt = torch.randint(65, (8, 4))
    cached = gpt.generate(model, prompt, 20, temperature=0, kv_cache=True)
    assert torch.equal(cached, gpt.generate(model, prompt, 20, temperature=0, kv_cache=False))


def test_without_the_causal_mask_the_script_says_it_samples_without_the_cache(trained):
    proj, _ = trained
    r = run(proj, 'gpt.py', *TINY, '--causal=false', '--max_iters=10', '--out_dir=nc')
    assert r.returncode == 0 and 'sampling without the KV cache' in r.stdout, r.stderr


def test_a_fine_tune_that_only_gets_worse_keeps_its_starting_model(trained):
    proj, _ = trained
    r = run(proj, 'gpt.py', *TINY, '--init_from=out/ckpt.pt', '--out_dir=ft', '--max_iters=10', '--warmup_iters=0',
            '--learning_rate=1.0', '--muon_lr=5.0', '--grad_clip=0')
    assert r.returncode == 0, r.stderr
    losses = [float(line.rsplit(' ', 1)[1]) for line in val_lines(r.stdout)]
    assert losses[0] < losses[-1]  # the rate is far too high: the model only got worse
    assert re.search(rf'the model below: step 0, whose val loss {losses[0]:.4f} was the lowest', r.stdout)
    assert torch.load(proj / 'ft' / 'best.pt', weights_only=True)['iter_num'] == 0


# ---------------------------------------------------------------------------------- settings never ignored
@pytest.mark.parametrize('stop, message', [('\\n', "--stop=$'\\n'"), ('@', "['@']")])
def test_a_stop_that_can_never_match_is_refused(trained, stop, message):
    proj, _ = trained
    msg = one_line_error(run(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', f'--stop={stop}'))
    assert 'not in the vocabulary, so no sample could end there' in msg and message in msg


def test_a_newline_stop_is_taken(trained):
    proj, _ = trained
    assert run(proj, 'gpt.py', '--init_from=resume', '--max_iters=0', '--stop=\n', '--max_new_tokens=5').returncode == 0


def test_resuming_past_max_iters_says_so_and_evaluates(trained):
    proj, _ = trained
    r = run(proj, 'gpt.py', *TINY, '--init_from=resume', '--max_iters=10', '--max_new_tokens=5')
    assert r.returncode == 0, r.stderr
    assert 'is at step 20, at or past max_iters=10: nothing to train' in r.stdout
    assert re.search(r'whole-split val loss [\d.]+ .*val bpb [\d.]+', r.stdout) and 'trained' not in r.stdout


def test_decay_lr_false_keeps_any_rate_constant(proj):
    for rate in ('3e-4', '5e-3'):
        r = run(proj, 'gpt.py', *LECTURE, '--max_iters=20', '--eval_interval=10',
                '--eval_iters=2', '--log_interval=5', '--max_new_tokens=0', f'--learning_rate={rate}', '--out_dir=c')
        assert r.returncode == 0, r.stderr
        assert set(re.findall(r'lr ([\d.e+-]+),', r.stdout)) == {f'{float(rate):.2e}'}
    both = run(proj, 'gpt.py', *TINY, '--decay_lr=false', '--min_lr=1e-4', '--max_iters=0')
    assert 'decay_lr=False has no decay' in one_line_error(both)


def test_pytorch_init_with_a_tied_head_is_refused(proj):
    msg = one_line_error(run(proj, 'gpt.py', *TINY, '--weight_init=pytorch'))
    assert 'tie_weights=false' in msg
    assert run(proj, 'gpt.py', *TINY, '--weight_init=pytorch', '--tie_weights=false', '--max_iters=2').returncode == 0


# ------------------------------------------------------------------------------------------------------ small
def test_a_busy_out_dir_is_refused_before_the_model_is_built(trained):
    proj, _ = trained
    from checkpoint import claim_out_dir
    lock = claim_out_dir(str(proj / 'out'))
    try:
        r = run(proj, 'gpt.py', *TINY, '--max_iters=30')
    finally:
        lock.close()
    assert 'is in use by' in one_line_error(r) and 'device:' not in r.stdout and 'model:' not in r.stdout


@pytest.mark.parametrize('dataset, command', [
    ('shakespeare_gpt2', 'python prepare.py --dataset=shakespeare_gpt2 --tokenizer_from=gpt2'),
    ('shakespeare_tasks', 'python prepare.py --format=tasks --tokenizer_from=shakespeare_char'),
    ('mine', 'python prepare.py --input=YOUR_TEXT --dataset=mine')])
def test_an_unprepared_dataset_names_the_command_that_makes_it(proj, dataset, command):
    assert one_line_error(run(proj, 'gpt.py', f'--dataset={dataset}')).endswith(f'run: {command}')

