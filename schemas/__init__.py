"""Pydantic models of mailcfg's desired state (inventory) and of the agent's config.

`schemas` is the contract shared by the compiler and the runtime agent: the compiler validates
YAML into these models; the agent reads the JSON the compiler renders from them. It imports
nothing from `compiler` or `runtime`.
"""
