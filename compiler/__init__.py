"""mailcfg compiler: inventory → per-host file trees → plan → release on each host.

The folders are the stages, each importing only earlier ones (load ← render ← push):
`load/` reads and checks the inventory (`load.inventory.load_inventory`), `render/` resolves
and renders each host (`render.resolve.resolve_host`, `render.render.render_host`,
`render.targets.compile_targets`), `push/` observes, plans, shows and applies
(`push.observe.observe_host`, `push.plan.make_plan`, `push.show.format_plan`,
`push.apply.apply_plan`, `push.fleet`). `connectors/` (local, ssh), `cache/` and `tools/` are
leaves. `build.py` assembles one build session (the CLI and library users enter there);
`cli.py` is argument parsing and output only. Everything before `observe` is pure.
"""
