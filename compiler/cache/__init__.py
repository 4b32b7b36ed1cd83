"""Caches: where cache directories live and when they are safe (`cachedir`), the HMAC-tagged
pack store the load and render caches write (`packstore`), and the garbage-collector pause
used around allocation-heavy steps (`gcpause`). A leaf: imports no stage."""
