"""
Sampling at a terminal, for gpt.py's sample(): a sample printed as it grows, and --interactive's
prompts read from standard input. It never imports gpt.
"""
from checks import prompt_problem


class Printer:
    """A sample printed as it grows: show() is generate()'s stream, ends() its stop."""

    def __init__(self, tok, end):
        self.tok = tok
        self.end = end  # the text a sample ends at, or ''
        self.printed = 0  # characters of the sample's text printed so far

    def ends(self, ids):
        """Whether the sample's ids so far hold the end."""
        return bool(self.end) and self.end in self.tok.decode(ids)

    def show(self, new, final=False):
        """Print the text that is ready (no character cut in half, nothing that may be the start of
        the end) of the first row of new (each row's ids so far), up to the end."""
        text = self.tok.decode(new[0])
        end_at = -1
        if self.end:
            end_at = text.find(self.end)
        if end_at >= 0:
            ready = end_at
        elif final:
            ready = len(text)
        else:  # decode() ends a cut character in '\ufffd'
            ready = len(text.rstrip('\ufffd')) - max(len(self.end) - 1, 0)
        print(text[self.printed:ready], end='', flush=True)
        self.printed = max(self.printed, ready)


def prompts(tok, block_size, sep, prompt, interactive):
    """The prompt (checked before training); or with interactive=True, each line typed (or piped
    in) until an empty line or Ctrl-D, where a line that the model can't take is said and
    skipped."""
    while interactive:
        try:
            line = input('prompt> ')
        except EOFError:
            return
        if not line:
            return
        problem = prompt_problem(tok, line + sep, block_size)
        if problem:
            print(problem)
        else:
            yield line
    yield prompt
