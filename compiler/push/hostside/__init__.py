"""The stdlib-only program that runs on each host: the release store, the release transaction
and the read-only commands, with its declared JSON wire format (`wire`).

The controller never runs this code itself: `compiler.push.hostcall` zips these modules, as they
are, into one program (`onhost-<digest>.pyz`, the digest covering every module), uploads it and
runs it there with `python3 -I -S` (Python 3.9 or later); `onhost.main` is its entry point. The
controller imports only `wire`, for the declarations and the validator. No module here is named
like a standard-library module, and none imports anything but the standard library and its
siblings (relative imports: the package has another name inside the zip).
"""
