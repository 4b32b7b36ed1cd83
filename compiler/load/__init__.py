"""Load stage: read the inventory (YAML with positions, size and symlink bounds), validate it
against the schemas, cross-check it, and report located diagnostics; the per-domain parse cache
and the policy layers every later stage merges. Imports no later stage."""
