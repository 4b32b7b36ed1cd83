"""Mail-log follower, parser and per-account daily statistics of the runtime agent."""
