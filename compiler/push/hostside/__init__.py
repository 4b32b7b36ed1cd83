"""The stdlib-only script that runs on each host (`onhost.py`). It is read as data and
uploaded by `compiler.push.hostcall`, never imported on the controller except by its tests;
no sibling module here shadows a standard-library module."""
