"""Small tools beside the pipeline: agent statistics (`stats`), CODEOWNERS from the domains'
admins (`codeowners`), password hashing (`passwd`) and the inventory's JSON Schema export
(`schema`)."""
