"""Push stage: observe a host in one round trip, plan the changes, show them, apply a release
(or roll back), and run those on many hosts in parallel. The on-host script lives in
`hostside/`, shipped as data and run there with `python3 -I -S`. Imports `render` for its
targets, `connectors` for transports."""
