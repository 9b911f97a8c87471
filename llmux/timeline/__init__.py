"""``llmux timeline``: what happened, rebuilt from llmux's JSON log lines.

:mod:`.reading` reads the files in write order and finds lines lost;
:mod:`.story` rebuilds states, switches, hooks and requests; :mod:`.render`
draws them for a terminal or as a self-contained HTML page.
"""
