"""The README's figures against docs/results.md's "Current figures" table.

Each row of that table gives a figure's value and, in its last column, the README's own words around it
(phrases separated by ' · '). A row holds when each phrase is in the README and each number of its value
is in one of its phrases (as written, or rounded to the phrase's decimals). The README holds when every
measured-looking number in it (a decimal, or a number with a unit: s, ms, x, %, MiB, GB, minutes,
tokens/s) lies inside a phrase of a row whose value has it, or inside one of NOT_FIGURES below.
So a figure changed in one place only, or a new figure with no row, fails here.
"""
import os
import re
from decimal import Decimal, ROUND_HALF_UP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# numbers in the README that no run here measured: settings, the lecture's own figures, nanoGPT's, arithmetic
NOT_FIGURES = [
    'The first 90% is the train split',
    "the lecture's is 2.49",
    '4x wider inside',
    '(ours: 4x wide, two Linears)',
    '| 2.49 |', '| 2.40 |', '| 2.28 |', '| 2.24 |', '| 2.08 |', '| 2.06 |', '| 1.48 |',
    '(6 x 384, block 256)',
    'when its median is 10% faster',
    'linear over the last 40%',
    'trains the config for 60 s',
    'an even spread over 8 gives 0.245',
    '(0.1 is best on BPE 2048)',
    'is 2.120 bits per byte',
    'batch 32, dropout 0.1,',
    'short of 4x',  # the goal the batch was set
]
NUMBER = re.compile(r'(?<![\w./])(\d[\d,]*(?:\.\d+)?)(?![\w.]*\d)')
UNIT = re.compile(r'\s?(ms|s|x|%|MiB|GB|minutes|tokens/s)\b')


def flat(text):
    """Markdown as one line: no bold, single spaces."""
    return ' '.join(text.replace('**', '').split())


def read(*path):
    with open(os.path.join(REPO, *path), encoding='utf-8') as f:
        return f.read()


def current_rows():
    """(figure, value, phrases) of each row of the Current figures table."""
    text = read('docs', 'results.md')
    table = text.split('## Current figures', 1)[1].split('\n## ', 1)[0]
    rows = []
    for line in table.splitlines():
        if not line.startswith('| ') or line.startswith('| figure |'):
            continue
        cells = [c.strip().replace('\\|', '|') for c in re.split(r'(?<!\\)\|', line)[1:-1]]
        assert len(cells) == 5, f'a Current figures row needs 5 cells: {line}'
        rows.append((cells[0], cells[1], [flat(p) for p in cells[4].split(' · ')]))
    return rows


def numbers(text):
    """The numbers in text as (start, end, Decimal), a date's or a version's parts left out."""
    found = []
    for m in NUMBER.finditer(text):
        found.append((m.start(), m.end(), Decimal(m.group(1).replace(',', ''))))
    return found


def same(written, value):
    """written is value, or value rounded to written's decimals."""
    places = -written.as_tuple().exponent
    return written == value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def is_figure(text, start, end, number):
    return number.as_tuple().exponent < 0 or UNIT.match(text, end) is not None


def test_the_table_opens_results_and_has_rows():
    text = read('docs', 'results.md')
    first_section = re.search(r'^## .*$', text, re.M).group(0)
    assert first_section == '## Current figures'
    assert len(current_rows()) >= 40


def test_each_row_is_in_the_readme_with_its_value():
    readme = flat(read('README.md'))
    for figure, value, phrases in current_rows():
        for phrase in phrases:
            said = phrase in readme
            assert said, f'{figure}: the README no longer says "{phrase}"'
        for _, _, v in numbers(value):
            held = any(same(n, v) for phrase in phrases for _, _, n in numbers(phrase))
            assert held, f'{figure}: {v} is in none of "{" · ".join(phrases)}"'


def test_every_figure_in_the_readme_is_in_the_table():
    readme = flat(read('README.md'))
    covered = set()
    for _, value, phrases in current_rows():
        values = [v for _, _, v in numbers(value)]
        for phrase in phrases:
            for m in re.finditer(re.escape(phrase), readme):
                for start, _, n in numbers(phrase):
                    if any(same(n, v) for v in values):
                        covered.add(m.start() + start)
    for phrase in NOT_FIGURES:
        said = phrase in readme
        assert said, f'NOT_FIGURES: the README no longer says "{phrase}"'
        for m in re.finditer(re.escape(phrase), readme):
            covered.update(m.start() + start for start, _, _ in numbers(phrase))
    loose = []
    for start, end, n in numbers(readme):
        if is_figure(readme, start, end, n) and start not in covered:
            loose.append(readme[max(0, start - 40):end + 20])
    assert not loose, 'figures in the README with no Current figures row:\n' + '\n'.join(loose)
