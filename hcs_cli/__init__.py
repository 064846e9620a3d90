"""The `hcs` command: the public surface over the core (`hcs`) and the servers (`extender`,
`webhook`). The core never imports this package or the servers."""
