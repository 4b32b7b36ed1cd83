"""Postfix SMTP access policy service: protocol, checks, DNS lookups, server."""
