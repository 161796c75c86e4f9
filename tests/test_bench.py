"""bench.py end to end, on a tiny model: what it prints, not how fast (speed is for benchmarks)."""
import re

import pytest

from conftest import TINY, run

pytestmark = pytest.mark.slow  # bench.py trains gpt.py in a process of its own, then times sampling


def test_bench_ends_with_how_long_the_config_takes_here(proj):
    r = run(proj, 'bench.py', *TINY, '--budget=3', '--gen_tokens=5', '--gen_repeats=1', '--max_iters=400')
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    found = re.search(r'^here: .*; dtype (\w+); Newton-Schulz in (\w+); int8 on the (\w+) road \(.*\); '
                      r"a step (\d+) ms with its share of the evals; this config's run, max_iters=400: "
                      r"about ([\d.]+) minutes$", last)
    assert found, last
    # the roads the run took (its checkpoint's), and int8's
    assert found.group(1) in ('float32', 'bfloat16') and found.group(2) in ('float32', 'bfloat16')
    assert found.group(3) in ('kernel', 'float')
    step_ms, minutes = int(found.group(4)), float(found.group(5))
    # the whole run is max_iters steps at the measured pace, rounded as printed
    assert abs(minutes - 400 * step_ms / 60000) <= 0.05 + 400 * 0.5 / 60000
    assert '| training tokens/s' in r.stdout and '| KV cache speed-up |' in r.stdout
    batch = re.search(r'^\| generation tokens/s, KV cache, fp32, batch 8 \(--num_samples=8\) \| [\d,]+ '
                      r'\(([\d.]+)x batch 1\) \|$', r.stdout, re.M)
    assert batch and float(batch.group(1)) > 0, r.stdout
