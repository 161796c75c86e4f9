"""
One experiment, one command: gpt.py over every combination of the listed values, each at several seeds,
one run at a time, each in its own folder; then a table of the whole-split val bpb and loss as mean ± std
over the seeds, a CSV with a row for each run, and a picture.

    python sweep.py --n_layer=1,2,4,6 --seeds=3 --max_time=60 --max_iters=1000000 --out_dir=sweeps/depth
    python sweep.py config/lecture/layernorm.py --n_layer=1,3,6 --residual=true,false --seeds=3

A --key=V1,V2 (a comma) is swept; a --key=V goes to every run, as do config files (first). seeds and out_dir
are the sweep's own: seeds N runs each combination with seeds 1337, 1338, ...; out_dir holds one folder a run,
sweep.csv and sweep.png. The picture draws val bpb against the first swept knob, with the seeds' spread
as error bars, one line for each value of the second. Rerun the same command and the runs that finished are
skipped: a sweep stopped by Ctrl-C goes on where it stopped. Each grid is checked by gpt.py's configurator
before anything runs; a run that fails is reported in its row and the sweep goes on.
"""
import contextlib
import csv
import io
import itertools
import json
import os
import re
import statistics
import subprocess
import sys

import gpt
from configurator import configure
from plot import pyplot, save

ROOT = os.path.dirname(os.path.abspath(__file__))
TEXT = ('prompt', 'stop')  # knobs whose values may hold commas: never swept


def die(msg):
    sys.exit(f"sweep: {msg}")


def parse(argv):
    """Config files, the swept knobs ({key: [values as typed]}), the knobs for every run, seeds and out_dir."""
    configs, swept, fixed, seeds, out_dir = [], {}, [], 1, os.path.join('sweeps', 'sweep')
    for arg in argv:
        key, _, value = arg[2:].partition('=')
        if not arg.startswith('--'):
            configs.append(arg)
        elif key == 'seeds':
            seeds = int(value) if value.isdigit() else 0
            if seeds < 1:
                die(f"--seeds must be a whole number of at least 1, not '{value}'")
        elif key == 'out_dir':
            out_dir = value
        elif ',' in value and key not in TEXT:
            swept[key] = value.split(',')
            if '' in swept[key]:
                die(f"--{key}={value} has an empty value in its list")
        else:
            fixed.append(arg)
    return configs, swept, fixed, seeds, out_dir


def runs(configs, swept, fixed, seeds, out_dir):
    """Every run: (the combination's values, seed, its folder, gpt.py's arguments). Each combination is checked
    first by gpt.py's configurator, which refuses an unknown knob (with a suggestion) or a value of the wrong type."""
    todo = []
    for values in itertools.product(*swept.values()):
        combo = dict(zip(swept, values))
        args = [*configs, *fixed, *(f'--{k}={v}' for k, v in combo.items())]
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                configure(dict(vars(gpt)), args)
            except SystemExit as e:
                die(f"{e.code} (in {' '.join(args)})")
        for seed in range(1337, 1337 + seeds):
            name = '-'.join(f"{k}={v}" for k, v in combo.items()) + f"-seed={seed}" if combo else f"seed={seed}"
            folder = os.path.join(out_dir, re.sub(r'[^\w.=-]', '_', name))
            todo.append((combo, seed, folder, [*args, f'--seed={seed}', f'--out_dir={folder}', '--max_new_tokens=0']))
    return todo


def run_one(folder, args):
    """Run gpt.py; its result as a dict (kept in <folder>/result.json), or the line it failed with."""
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'gpt.py'), *args], capture_output=True, text=True)
    final = re.search(r'whole-split val loss ([\d.]+) .*val bpb ([\d.]+)', r.stdout)
    trained = re.search(r'trained (\d+) steps in ([\d.]+)s', r.stdout)
    if r.returncode != 0 or not final or not trained:
        lines = (r.stderr.strip() or r.stdout.strip() or f'exit {r.returncode}').splitlines()
        return {'status': 'failed: ' + lines[-1]}
    result = {'status': 'ok', 'val_loss': float(final.group(1)), 'val_bpb': float(final.group(2)),
              'steps': int(trained.group(1)), 'time_s': float(trained.group(2))}
    with open(os.path.join(ROOT, folder, 'result.json'), 'w') as f:
        json.dump(result, f)
    return result


def mean_std(xs):
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def report(swept, done, out_dir):
    """The Markdown table (a row for each combination), sweep.csv (a row for each run) and sweep.png."""
    keys = list(swept)
    try:
        os.makedirs(os.path.join(ROOT, out_dir), exist_ok=True)
        with open(os.path.join(ROOT, out_dir, 'sweep.csv'), 'w', newline='') as f:
            w = csv.writer(f)
            w.writerow([*keys, 'seed', 'val_bpb', 'val_loss', 'steps', 'time_s', 'status'])
            for combo, seed, r in done:
                w.writerow([*combo.values(), seed, *(r.get(k, '') for k in ('val_bpb', 'val_loss', 'steps',
                                                                             'time_s')), r['status']])
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
    if keys:
        draw(keys, groups, os.path.join(ROOT, out_dir, 'sweep.png'))


def draw(keys, groups, target):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    xs = list(dict.fromkeys(v[0] for v in groups))  # the first knob's values, in the order given
    for line in dict.fromkeys(v[1:] for v in groups):  # one line for each value of the second knob (and on)
        pts = [(xs.index(v[0]), [r['val_bpb'] for r in rs if r['status'] == 'ok']) for v, rs in groups.items()
               if v[1:] == line]
        pts = [(i, b) for i, b in pts if b]
        label = ', '.join(f"{k}={v}" for k, v in zip(keys[1:], line)) or None
        ax.errorbar([i for i, _ in pts], [statistics.mean(b) for _, b in pts], capsize=3, marker='o', label=label,
                    yerr=[statistics.stdev(b) if len(b) > 1 else 0 for _, b in pts])
    ax.set_xticks(range(len(xs)), xs, rotation=20 if max(map(len, xs)) > 6 else 0)  # long names: tilted
    ax.set_xlabel(keys[0])
    ax.set_ylabel('whole-split val bpb (mean ± std over seeds)')
    if len(keys) > 1:
        ax.legend()
    fig.tight_layout()
    save(fig, target)


def main(argv):
    if '-h' in argv or '--help' in argv:
        print(__doc__.strip())
        return
    configs, swept, fixed, seeds, out_dir = parse(argv)
    todo = runs(configs, swept, fixed, seeds, out_dir)
    done = []
    for i, (combo, seed, folder, args) in enumerate(todo, 1):
        path = os.path.join(ROOT, folder, 'result.json')
        if os.path.isfile(path):  # finished in an earlier call of the same command
            with open(path) as f:
                done.append((combo, seed, json.load(f)))
            print(f"[{i}/{len(todo)}] {folder}: done already")
            continue
        print(f"[{i}/{len(todo)}] {folder}: running", flush=True)
        done.append((combo, seed, run_one(folder, args)))
        print(f"    {done[-1][2]}", flush=True)
    report(swept, done, out_dir)


if __name__ == '__main__':
    try:
        main(sys.argv[1:])
    except KeyboardInterrupt:  # gpt.py saved its step; this run starts again when the same command is rerun
        sys.exit("sweep: stopped; run the same command again to go on where it stopped")
