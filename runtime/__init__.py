"""mailcfg runtime agent: Postfix policy service and mail-log follower.

Imports `schemas` only, never `compiler`; reads the agent config the compiler renders.
"""
