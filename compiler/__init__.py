"""mailcfg compiler: inventory → per-host file trees → plan → release on each host.

Stages (each callable by a library user): `inventory.load_inventory`, `resolve.resolve_host`,
`render.render_host`, `observe.observe_host`, `plan.make_plan`, `show.format_plan`,
`apply.apply_plan`. Everything before `observe` is pure.
"""
