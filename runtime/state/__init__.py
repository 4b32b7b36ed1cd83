"""Agent state (counters, locks, once-ledgers, statistics, log positions) behind one interface."""
