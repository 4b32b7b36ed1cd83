"""Render stage: resolve each host's config from the layers, load roles, build the template
context and the domain-set tables (maps, passwd-file, agent.json, Sieve) through the fragment
join, render every role's files into a `FileTree`, and compile targets (tree + activations).
Pure: reads the inventory model and templates only. Imports `load`, never `push`."""
