"""
Config overrides in nanoGPT's style, without its traps:

    python gpt.py [config/file.py ...] [--key=value ...]

A config file is Python, executed in turn: only run config files you trust.
A --key=value is parsed as a Python literal (ast.literal_eval), never executed,
and must fit the type of the knob's default: --dropout=0 is a float, --compile=false
a bool, --n_layer=2.5 an error. A knob whose default is None takes any value.

The knobs are the lower-case plain globals (int, float, bool, str, None) of the calling script.
Nothing here reads sys.argv on import; the script calls configure(globals(), sys.argv[1:]).
"""
import ast
import difflib
import os
import re
import sys

from checks import die

TRUE, FALSE = ('true', '1', 'yes', 'on'), ('false', '0', 'no', 'off')


def knobs(scope):
    """The lower-case plain globals: CONSTANTS, _private names, modules
    and functions are not knobs."""
    return {k: v for k, v in scope.items()
            if k.islower() and not k.startswith('_') and (v is None or type(v) in (int, float, bool, str))}


def coerce(key, value, default):
    """The value converted to the knob's type, or a one-line error."""
    if default is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in TRUE + FALSE:
            return str(value).lower() in TRUE
    elif kind is int:
        if type(value) is int:
            return value
        if type(value) is float and value.is_integer():
            return int(value)
    elif kind is float:
        if type(value) in (int, float):
            return float(value)
    elif isinstance(value, str):
        return value
    die(f"{key}={value!r} is not a valid {kind.__name__} (the default is {default!r})")


def unknown(key, names):
    close = difflib.get_close_matches(key, names, n=1)
    die(f"unknown config key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))


def apply(scope, known, key, value, source):
    if key not in known:
        unknown(key, known)
    scope[key] = coerce(key, value, known[key])
    # what was set, apart from the defaults
    scope['CONFIGURED'] = {**scope.get('CONFIGURED', {}), key: source}
    print(f"config: {key} = {scope[key]!r}  ({source})")


def print_help(scope, known):
    """Each knob with its default and the comment beside it in the script
    (what it does, and its values)."""
    try:
        with open(scope['__file__'], encoding='utf-8') as f:
            comments = dict(re.findall(r'^(\w+) = .*?  # (.*)$', f.read(), flags=re.M))
    except (KeyError, OSError):
        comments = {}
    print("knobs (override with --key=value, or in a config file):")
    for k, v in known.items():
        print(f"  --{k}={v!r}" + (f"  # {comments[k]}" if k in comments else ''))


def configure(scope, argv):
    """Override the knobs in `scope` (a script's globals()) from config files and --key=value; the
    names set, with where from, go in scope['CONFIGURED']."""
    known = knobs(scope)
    for arg in argv:
        if arg in ('-h', '--help'):
            print_help(scope, known)
            sys.exit(0)
        if not arg.startswith('--'):  # a config file
            if not os.path.isfile(arg):
                die(f"config file '{arg}' not found (arguments are config files or --key=value)")
            ns = {k: scope[k] for k in known}
            try:
                with open(arg, encoding='utf-8') as f:
                    exec(compile(f.read(), arg, 'exec'), ns)
            except Exception as e:
                die(f"config file '{arg}' failed: {type(e).__name__}: {e}")
            # imports and helpers inside a config file are not knobs; any other new name is a typo
            names = [k for k, v in ns.items() if not (k.startswith('_') or callable(v) or type(v).__name__ == 'module')]
            for k in names:
                if k not in known:
                    unknown(k, known)
            for k in names:
                if ns[k] is not scope[k]:
                    apply(scope, known, k, ns[k], arg)
            continue
        key, eq, raw = arg[2:].partition('=')
        if not eq:
            die(f"'{arg}' has no '=': write --{key}=VALUE")
        if key not in known:
            unknown(key, known)
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = raw  # a bare word: keep it as a string
        if isinstance(known[key], str) and not isinstance(value, str):
            value = raw  # --prompt=123 means the text "123"
        apply(scope, known, key, value, 'command line')
