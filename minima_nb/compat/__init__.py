"""minima-llm's advanced classes (``RpmGate``, ``Cooldown``, ``PromptCache``) as thin faces.

Each keeps minima-llm 0.2.8's constructor and documented methods and delegates to minima_nb's
own part (the pacer, the cache), so code that used them runs with only the import changed.
"""

from .gates import Cooldown, RateLimitInfo, RpmGate
from .promptcache import CacheRow, PromptCache

__all__ = ["CacheRow", "Cooldown", "PromptCache", "RateLimitInfo", "RpmGate"]
