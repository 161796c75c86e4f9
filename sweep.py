"""
One experiment, one command: gpt.py over every combination of the listed values, each at several
seeds, each in its own folder; then a table of the whole-split val bpb and loss as mean ± std over
the seeds, a CSV with a row for each run, and a picture.

    python sweep.py --n_layer=1,2,4,6 --seeds=3 --max_time=60 --max_iters=1000000 --out_dir=sweeps/depth
    python sweep.py config/lecture/layernorm.py --n_layer=1,3,6 --residual=true,false --seeds=3 --jobs=2

Runs go one at a time, or --jobs=N at once, each on its share of the cores (OMP_NUM_THREADS): on a
2-core CPU a sweep of 4 small runs took 87 s instead of 118 s (docs/profile.md). Only a sweep of equal steps may: under --max_time, runs
side by side would slow each other and get fewer steps. The next seed of a combination starts once
the one before it has chosen its precisions (roads.py keeps them), so that all take the same.

A --key=V1,V2 (a comma) is swept; a --key=V goes to every run, as do config files (first). seeds
and out_dir are the sweep's own: seeds N runs each combination with seeds 1337, 1338, ... (or from
--seed=S on; a listed --seed=S1,S2 gives the seeds themselves); out_dir holds one folder a run,
sweep.csv and sweep.png. The picture draws val bpb against the first swept knob, with the seeds'
spread as error bars, one line for each value of the second. Every combination is checked by
gpt.py's configurator and its setting checks before anything runs.

Each run's folder keeps the command it belongs to (run.json: gpt.py's arguments and the
config files' sha256), so a folder of another command is refused, never reported as this
one's; its name is its values and a short hash of them, so values that read alike never share
one. Rerun the same command and the finished runs are skipped; Ctrl-C or SIGTERM lets the
running gpt.py save its step, and the rerun resumes it from there. A sweep that dies (kill -9
too) takes its runs with it: each gets SIGTERM and saves; a rerun waits for any still saving. A
run that fails is reported in its row, the sweep goes on, and it exits 1.
"""
import contextlib
import csv
import ctypes
import hashlib
import io
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import gpt
from checkpoint import fcntl, read_log, write_atomic
from checks import die, problems
from configurator import configure, knobs
from plot import pyplot, save

ROOT = os.path.dirname(os.path.abspath(__file__))
TEXT = ('prompt', 'stop')  # knobs whose values may hold commas: never swept
try:
    LIBC = ctypes.CDLL(None, use_errno=True)  # for die_with_parent
except OSError:
    LIBC = None


class Stopped(Exception):
    """SIGTERM, raised where the sweep waits, as Ctrl-C raises KeyboardInterrupt."""


def parse(argv):
    """Config files, the swept knobs ({key: [values as typed]}), the knobs for
    every run, the seeds and out_dir."""
    configs, swept, fixed, n_seeds, first_seed, out_dir = [], {}, [], None, 1337, os.path.join('sweeps', 'sweep')
    jobs = 1
    for arg in argv:
        key, _, value = arg[2:].partition('=')
        if not arg.startswith('--'):
            configs.append(arg)
        elif key == 'jobs':
            jobs = int(value) if value.isdigit() else 0
            if jobs < 1:
                die(f"--jobs must be a whole number of at least 1, not '{value}'")
        elif key == 'seeds':
            n_seeds = int(value) if value.isdigit() else 0
            if n_seeds < 1:
                die(f"--seeds must be a whole number of at least 1, not '{value}'")
        elif key == 'out_dir':
            out_dir = value
        elif ',' in value and key not in TEXT:
            swept[key] = value.split(',')
            if '' in swept[key]:
                die(f"--{key}={value} has an empty value in its list")
            if len(set(swept[key])) < len(swept[key]):
                die(f"--{key}={value} lists a value twice: each run would count twice")
        elif key == 'seed':
            first_seed = whole(value)
        else:
            fixed.append(arg)
    if 'seed' in swept:  # the seeds themselves
        if n_seeds is not None:
            die("give --seeds=N (seeds from --seed on) or a list --seed=S1,S2, not both")
        seeds = [whole(v) for v in swept.pop('seed')]
    else:
        seeds = list(range(first_seed, first_seed + (n_seeds or 1)))
    return configs, swept, fixed, seeds, out_dir, jobs


def whole(value):
    if not value.isdigit():
        die(f"--seed takes whole numbers, not '{value}'")
    return int(value)


def command_record(configs, args):
    """What makes two runs the same run: gpt.py's settings (a knob given twice is its last value;
    their order is not), and the text of each config file, in order."""
    digests = {}
    for path in configs:
        with open(path, 'rb') as f:
            digests[path] = hashlib.sha256(f.read()).hexdigest()
    settings = {}
    for arg in args:
        key, _, value = arg.partition('=')
        settings[key] = value
    return {'args': [f"{key}={settings[key]}" for key in sorted(settings)], 'config_sha256': digests}


def folder_of(out_dir, combo, seed):
    """A run's folder: a readable stem of its values, and a short hash of the exact values, so that
    values that read alike (a/b and a_b) never share a folder."""
    parts = [f"{k}={v}" for k, v in combo.items()] + [f"seed={seed}"]
    stem = ''.join(c if c.isalnum() or c in '.=-' else '_' for c in '-'.join(parts))
    if not combo:
        return os.path.join(out_dir, stem)
    digest = hashlib.sha256(json.dumps([combo, seed]).encode()).hexdigest()[:8]
    return os.path.join(out_dir, f"{stem[:80]}-{digest}")


def runs(configs, swept, fixed, seeds, out_dir):
    """Every run: (the combination's values, seed, its folder, gpt.py's arguments). Each run is
    checked first by gpt.py's configurator (an unknown knob, with a suggestion, or a value of the
    wrong type) and its setting checks (checks.py: a value that can't work)."""
    todo, timed = [], False
    for values in itertools.product(*swept.values()):
        combo = dict(zip(swept, values))
        for seed in seeds:
            folder = folder_of(out_dir, combo, seed)
            args = [*configs, *fixed, *(f'--{k}={v}' for k, v in combo.items()), f'--seed={seed}',
                    f'--out_dir={folder}', '--max_new_tokens=0']
            timed = check(args) or timed
            todo.append((combo, seed, folder, args))
    return todo, timed


def check(args):
    """gpt.py's configurator and setting checks on one run's arguments; the sweep stops on the
    first problem. Whether the run has a time budget (max_time)."""
    scope = dict(vars(gpt))
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            configure(scope, args)
        except SystemExit as e:
            die(f"{str(e.code).removeprefix('error: ')} (in {' '.join(args)})")
    found = problems(SimpleNamespace(**knobs(scope)), ROOT, scope['CONFIGURED'])
    if found:
        die(f"{found[0]} (in {' '.join(args)})")
    return scope['max_time'] > 0


def claim(folder, record):
    """The run's folder for this command: refused in one line if it
    holds a run of another command."""
    path = os.path.join(ROOT, folder, 'run.json')
    if os.path.isfile(path):
        with open(path) as f:
            theirs = json.load(f)
        if theirs == record:
            return
    elif not os.path.exists(os.path.join(ROOT, folder)):
        return
    die(f"{folder} holds a run of another command (its run.json differs, or has none); give another --out_dir, "
        f"or remove that folder")


def start_one(folder, args, record, threads):
    """Start gpt.py (resumed from its checkpoint if an earlier call was stopped) on threads cores;
    its output goes to <folder>/gpt.out. It gets SIGTERM, and saves its step, if the sweep dies
    (kill -9 too). A gpt.py of an earlier sweep still in the folder is waited for."""
    write_atomic({os.path.join(ROOT, folder, 'run.json'): json.dumps(record).encode()})
    wait_for_lock(folder)
    if os.path.isfile(os.path.join(ROOT, folder, 'ckpt.pt')):
        args = [*args, '--init_from=resume']
    env = dict(os.environ)
    if threads:
        env['OMP_NUM_THREADS'] = str(threads)
    with open(os.path.join(ROOT, folder, 'gpt.out'), 'w') as out:
        return subprocess.Popen([sys.executable, os.path.join(ROOT, 'gpt.py'), *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)


def die_with_parent():
    """In the child, before gpt.py starts: on Linux, SIGTERM when the sweep ends, however it ends.
    libc is loaded in the parent (LIBC): the forked child only calls prctl."""
    if LIBC is not None and hasattr(LIBC, 'prctl'):  # elsewhere a killed sweep's runs go on (waited for)
        LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def wait_for_lock(folder):
    """Wait while a gpt.py (of a sweep that was killed) still holds the folder's run.lock."""
    path = os.path.join(ROOT, folder, 'run.lock')
    if fcntl is None or not os.path.isfile(path):
        return
    with open(path, 'a+') as lock:
        said = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    lock.seek(0)
                    print(f"    {folder}: waiting for {lock.read().strip() or 'a run'} to end", flush=True)
                    said = True
                time.sleep(0.5)
        fcntl.flock(lock, fcntl.LOCK_UN)


def result_of(proc, folder):
    """A finished run's result, read from its log.csv and kept in <folder>/result.json, or the last
    line it printed when it failed."""
    final = final_row(os.path.join(ROOT, folder, 'log.csv'))
    if proc.returncode != 0 or final is None:
        with open(os.path.join(ROOT, folder, 'gpt.out'), errors='replace') as f:
            lines = f.read().strip().splitlines() or [f'exit {proc.returncode}']
        return {'status': 'failed: ' + lines[-1]}
    result = {'status': 'ok', 'val_loss': float(final['val_loss']), 'val_bpb': float(final['val_bpb']),
              'steps': int(final['iter']), 'time_s': float(final['time_s'])}
    write_atomic({os.path.join(ROOT, folder, 'result.json'): json.dumps(result).encode()})  # marks it done
    return result


def run_all(todo, records, jobs, finished):
    """Run every run not in finished, jobs at a time; yield (index, result) as each run ends. A run waits
    for the run before it of the same combination to have chosen its precisions (its log.csv
    exists), so that it finds them in roads.py's cache. Ctrl-C or SIGTERM stops every running gpt.py,
    each saving its step."""
    threads = 0  # gpt.py's own choice, alone
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    waiting, running = [i for i in range(len(todo)) if i not in finished], {}
    try:
        while waiting or running:
            for i in list(waiting):
                before = i > 0 and todo[i - 1][0] == todo[i][0] and (i - 1 in running or i - 1 in waiting)
                if len(running) < jobs and not (before and not has_log(todo[i - 1][2])):
                    waiting.remove(i)
                    print(f"[{i + 1}/{len(todo)}] {todo[i][2]}: running{resumed(todo[i][2])}", flush=True)
                    running[i] = start_one(todo[i][2], todo[i][3], records[i], threads)
            time.sleep(0.2)
            for i, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[i]
                    yield i, result_of(proc, todo[i][2])
    except (KeyboardInterrupt, Stopped) as e:
        for proc in running.values():
            stop_child(proc, signal.SIGTERM if isinstance(e, Stopped) else signal.SIGINT)
        raise


def has_log(folder):
    return os.path.isfile(os.path.join(ROOT, folder, 'log.csv'))


def resumed(folder):
    if os.path.isfile(os.path.join(ROOT, folder, 'ckpt.pt')):
        return ' (resumed from its checkpoint)'
    return ''


def stop_child(proc, signum):
    """Pass the signal on (a terminal's Ctrl-C reached gpt.py already; a signal to the sweep alone
    did not), and wait while gpt.py saves its step and exits."""
    proc.send_signal(signum)
    while proc.poll() is None:
        try:
            proc.wait()
        except (KeyboardInterrupt, Stopped):  # another Ctrl-C: it is saving already
            pass


def final_row(path):
    """The last 'final' row of gpt.py's log.csv (whole-split val loss and bpb, steps, time
    trained), read by checkpoint.read_log, or None."""
    if not os.path.isfile(path):
        return None
    rows = [row for row in read_log(path, empty_ok=True) if row['kind'] == 'final']
    return rows[-1] if rows else None


def mean_std(xs):
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def report(swept, done, out_dir):
    """The Markdown table (a row for each combination), sweep.csv (a row
    for each run) and sweep.png."""
    keys = list(swept)
    try:
        os.makedirs(os.path.join(ROOT, out_dir), exist_ok=True)
        with open(os.path.join(ROOT, out_dir, 'sweep.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow([*keys, 'seed', 'val_bpb', 'val_loss', 'steps', 'time_s', 'status'])
            for combo, seed, r in done:
                cells = [r.get(k, '') for k in ('val_bpb', 'val_loss', 'steps', 'time_s')]
                w.writerow([*combo.values(), seed, *cells, r['status']])
    except OSError as e:
        die(f"cannot write {os.path.join(out_dir, 'sweep.csv')} ({e.strerror or e})")
    groups = {}
    for combo, seed, r in done:
        groups.setdefault(tuple(combo.values()), []).append(r)
    print(f"\n| {' | '.join(keys) or 'setting'} | val bpb | val loss | steps | time (s) | runs |")
    print('|' + '---|' * (max(len(keys), 1) + 5))
    for values, rs in groups.items():
        ok = [r for r in rs if r['status'] == 'ok']
        cells = ['', '', '', '']
        if ok:
            cells = [mean_std([r['val_bpb'] for r in ok]), mean_std([r['val_loss'] for r in ok]),
                     f"{statistics.mean(r['steps'] for r in ok):.0f}",
                     f"{statistics.mean(r['time_s'] for r in ok):.1f}"]
        failed = [r['status'] for r in rs if r['status'] != 'ok']
        runs_cell = f"{len(ok)} ok" + (f", {failed[0]}" if failed else '')
        print(f"| {' | '.join(values) or 'as given'} | {' | '.join(cells)} | {runs_cell} |")
    draw(keys, groups, os.path.join(ROOT, out_dir, 'sweep.png'))


def draw(keys, groups, target):
    """val bpb against the first swept knob (or one point, 'as given', when nothing is swept)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    groups = {values or ('as given',): rs for values, rs in groups.items()}
    xs = list(dict.fromkeys(v[0] for v in groups))  # the first knob's values, in the order given
    # one line for each value of the second knob (and on)
    for line in dict.fromkeys(v[1:] for v in groups):
        pts = []
        for values, rs in groups.items():
            bpbs = [r['val_bpb'] for r in rs if r['status'] == 'ok']
            if values[1:] == line and bpbs:
                pts.append((xs.index(values[0]), bpbs))
        label = ', '.join(f"{k}={v}" for k, v in zip(keys[1:], line)) or None
        ax.errorbar([i for i, _ in pts], [statistics.mean(b) for _, b in pts], capsize=3, marker='o', label=label,
                    yerr=[statistics.stdev(b) if len(b) > 1 else 0 for _, b in pts])
    # long names: tilted
    ax.set_xticks(range(len(xs)), xs, rotation=20 if max(map(len, xs)) > 6 else 0)
    ax.set_xlabel(keys[0] if keys else 'the command, as given')
    ax.set_ylabel('whole-split val bpb (mean ± std over seeds)')
    if len(keys) > 1:
        ax.legend()
    fig.tight_layout()
    save(fig, target)


def main(argv):
    if '-h' in argv or '--help' in argv:
        print(__doc__.strip())
        return 0
    configs, swept, fixed, seeds, out_dir, jobs = parse(argv)
    todo, timed = runs(configs, swept, fixed, seeds, out_dir)
    if jobs > 1 and timed:
        die(f"--jobs={jobs} runs side by side, which slows each: under --max_time every run would get fewer "
            f"steps. Sweep equal steps (--max_iters) with --jobs, or equal time one at a time")
    records = [command_record(configs, args) for *_, args in todo]
    for (_, _, folder, _), record in zip(todo, records):
        claim(folder, record)
    results = {}
    for i, (_, _, folder, _) in enumerate(todo):
        path = os.path.join(ROOT, folder, 'result.json')
        if os.path.isfile(path):  # finished in an earlier call of the same command
            with open(path) as f:
                results[i] = json.load(f)
            print(f"[{i + 1}/{len(todo)}] {folder}: done already")
    for i, result in run_all(todo, records, jobs, set(results)):
        results[i] = result
        print(f"    {todo[i][2]}: {result}", flush=True)
    done = [(combo, seed, results[i]) for i, (combo, seed, _, _) in enumerate(todo)]
    report(swept, done, out_dir)
    return int(any(r['status'] != 'ok' for *_, r in done))


def stopped(signum, frame):
    raise Stopped()


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, stopped)
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit("sweep: stopped; the running gpt.py saved its step: run the same command again to go on")
    except Stopped:
        sys.exit("sweep: stopped by SIGTERM; the running gpt.py saved its step: run the same command again to go on")
