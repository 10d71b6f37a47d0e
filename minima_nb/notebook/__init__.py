"""The notebook layer: the pandas accessor ``df.minima`` and what it needs (internal).

:mod:`.accessor` (the pandas-facing methods), :mod:`.jobs` (running one accessor call),
:mod:`.prompts` (columns and templates to messages), :mod:`.progress` (the widget bar),
:mod:`.session` (the default backend of ``minima_nb.configure``).
"""
