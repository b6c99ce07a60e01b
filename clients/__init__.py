"""Outside systems, one package each: an interface, a local implementation and a cloud one."""
